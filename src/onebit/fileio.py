"""Small file-writing helpers: files get the mode the umask gives an ordinary ``open``.

Some writers create files 0600 (``tempfile.mkstemp``, and ``safetensors``' ``save_file``, which
writes through a private temporary); the helpers here give them ``0666 & ~umask`` like the rest.
"""
from __future__ import annotations

import os


def umask_mode(base: int = 0o666) -> int:
    """``base`` with the process umask applied (what ``open(path, "w")`` would give)."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def chmod_umask(path: str | os.PathLike) -> None:
    os.chmod(path, umask_mode())


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the umask's mode instead of 0600."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    chmod_umask(path)
