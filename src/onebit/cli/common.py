"""Helpers shared by the subcommands: logging, model loading, output."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("onebit")


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onebit: %(message)s"))
    root = logging.getLogger("onebit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    # transformers' own chatter (progress bars for loading weights, warnings) stays quiet
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def progress_enabled(args: argparse.Namespace) -> bool:
    """Bars on a terminal, plain lines elsewhere (``main`` sets which); none with ``-q``."""
    return not getattr(args, "quiet", False) or getattr(args, "progress", False)


def add_dtype_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--dtype", default=default, choices=["auto", "float32", "float16", "bfloat16"],
                   help="dtype to load the model in (default: %(default)s = as stored)")


def _umask_mode() -> int:
    from ..fileio import umask_mode

    return umask_mode()


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, _umask_mode())  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
