"""Loading models and tokenizers from a hub id, a local directory or a packed checkpoint."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from .errors import OneBitError, first_line
from .formats.checkpoint import is_packed_checkpoint, read_config, read_headers
from .formats.gguf_header import check_gguf_file, read_gguf_header
from .loading import load_checkpoint
from .paths import _repo_shared, shared_dir  # noqa: F401  (they lived here)
from .tokenizers import context_length, gguf_source, load_tokenizer  # noqa: F401  (they lived here)

log = logging.getLogger("onebit")

#: hub model used by ``onebit demo`` when nothing local is found
DEMO_HUB_MODEL = "roneneldan/TinyStories-3M"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(spec: str) -> bool:
    """Anything that is not shaped like a hub id ('name' or 'org/name') is a path."""
    return spec.startswith((".", "~")) or not _HUB_ID.match(spec)


def check_gguf(path: Path) -> None:
    """One line for a GGUF file that cannot be read (truncated, not GGUF, unknown version)."""
    check_gguf_file(path)


def check_model_spec(spec: str) -> None:
    """Fail early, with one line, for paths that cannot be a model."""
    p = Path(spec).expanduser()
    src = gguf_source(spec) if p.exists() else None
    if src is not None:
        check_gguf(src[0] / src[1])
        return
    if p.exists():
        if not p.is_dir():
            raise OneBitError(f"'{spec}' is a file, not a model directory (nor a .gguf file)")
        if not (p / "config.json").is_file():
            raise OneBitError(f"'{spec}' is not a model directory (no config.json, no .gguf file)")
    elif _looks_like_path(spec):
        raise OneBitError(f"model path '{spec}' does not exist")


def load_model(spec: str, dtype: torch.dtype | None = None, device: str = "cpu") -> nn.Module:
    """A causal LM from a hub id / local HF directory, or a packed onebit checkpoint."""
    check_model_spec(spec)
    p = Path(spec).expanduser()
    if p.is_dir() and is_packed_checkpoint(p):
        model = load_checkpoint(p, device=device)
        if dtype is not None:
            model.to(dtype)
        return model
    src = gguf_source(spec)
    if src is not None:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(src[0]), gguf_file=src[1],
                                                         dtype=dtype if dtype is not None else torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = first_line(e)
            raise OneBitError(f"cannot load GGUF model '{spec}': {first}")
        pre = read_gguf_header(src[0] / src[1]).metadata.get("tokenizer.ggml.pre")
        if isinstance(pre, str):  # kept in config.json, so `onebit export` writes the same one back
            model.config.onebit_gguf_tokenizer_pre = pre
        return model.to(device).eval()
    if p.is_dir():
        read_config(p)  # clear error for a broken config.json
        if any(p.glob("*.safetensors")):  # truncated / corrupt weights: one line naming the file
            read_headers(p)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(p) if p.is_dir() else spec,
                                                     dtype=dtype if dtype is not None else "auto")
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e)
        raise OneBitError(f"cannot load model '{spec}': {first}")
    model.to(device)
    model.eval()
    return model


def resolve_demo_model(explicit: str | None = None) -> str:
    """--model, then $ONEBIT_DEMO_MODEL, then ../shared/models/stories3M, else a small hub model."""
    if explicit:
        return explicit
    if os.environ.get("ONEBIT_DEMO_MODEL"):
        return os.environ["ONEBIT_DEMO_MODEL"]
    sd = shared_dir()
    if sd is not None and (sd / "models" / "stories3M" / "config.json").is_file():
        return str(sd / "models" / "stories3M")
    return DEMO_HUB_MODEL
