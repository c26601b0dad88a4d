"""Where the shared models and data are (``shared/``); imports nothing from onebit."""
from __future__ import annotations

import os
from pathlib import Path


def _repo_shared() -> Path:
    """``shared`` beside the repository this package sits in (``<repo>/src/onebit/paths.py``)."""
    return Path(__file__).resolve().parents[2].parent / "shared"


def shared_dir() -> Path | None:
    """The real models and data: ``$ONEBIT_SHARED``, then ``../shared`` beside the working
    directory, then ``shared`` beside the repository; ``None`` where none exists."""
    env = os.environ.get("ONEBIT_SHARED")
    cands = [Path(env).expanduser()] if env else []
    cands += [Path.cwd() / ".." / "shared", _repo_shared()]
    for c in cands:
        if (c / "models").is_dir() or (c / "data").is_dir():
            return c.resolve()
    return None
