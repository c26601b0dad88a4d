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


def atomic_write(path: str | os.PathLike, write, suffix: str = "") -> None:
    """Write ``path`` all at once: ``write(tmp)`` fills a temporary file beside it (the umask's mode),
    which then replaces ``path``; on any error the temporary goes and ``path`` is untouched."""
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        chmod_umask(tmp)  # mkstemp (and safetensors) make it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a text file."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)
