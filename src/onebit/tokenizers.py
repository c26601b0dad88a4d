"""Where a model spec's tokenizer comes from (a hub id, a local directory or a GGUF file), and the
context length a model's config allows.

Data-layer helpers: the calibration data (:mod:`onebit.calibration`), the streaming drivers and
:mod:`onebit.models` (which re-exports them) all need a tokenizer by name, so it lives below them.
"""
from __future__ import annotations

from pathlib import Path

from .errors import OneBitError, first_line


def gguf_source(spec: str) -> tuple[Path, str] | None:
    """``(directory, file name)`` when ``spec`` names a GGUF model: a ``.gguf`` file, or a directory
    with no ``config.json`` and exactly one ``.gguf`` file in it."""
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p.parent, p.name
    if p.is_dir() and not (p / "config.json").is_file():
        files = sorted(p.glob("*.gguf"))
        if len(files) == 1:
            return p, files[0].name
        if len(files) > 1:
            raise OneBitError(f"'{spec}' holds {len(files)} GGUF files; name the one to use "
                              f"(e.g. {files[0]})")
    return None


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    src = gguf_source(spec)
    if src is not None:
        try:
            return AutoTokenizer.from_pretrained(str(src[0]), gguf_file=src[1])
        except (OSError, ValueError, KeyError, TypeError) as e:
            first = first_line(e)
            raise OneBitError(f"cannot load the tokenizer of GGUF model '{spec}': {first}")
    try:
        return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir()
                                             else spec)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = first_line(e)
        raise OneBitError(f"cannot load a tokenizer for '{spec}': {first}")


def context_length(model, cap: int = 2048) -> int:
    """The model's context (``max_position_embeddings`` or its synonyms), at most ``cap``."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return min(v, cap)
    return cap
