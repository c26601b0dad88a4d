"""Module surgery: which linears a method replaces, and the one helper that swaps a module in.

* :func:`find_linears` / :func:`as_linear`: every ``nn.Linear`` (and transformers' GPT-2
  ``Conv1D``, as a Linear view) whose name ``skip`` does not match and whose weight is not shared
  with an embedding;
* :func:`set_submodule`: replace the module at a dotted name (every swap in onebit goes through it);
* :func:`prepare_empty`: swap the linears a checkpoint's ``quantization_config`` names for the
  method's empty packed modules (the first step of loading a checkpoint);
  :func:`prepare_empty_embeddings` the same for its quantized embeddings / head.

It depends on the registry and the embedding settings only (never on the formats or the models),
so every layer above it (pipelines, loading, tools) can use it.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .embeddings import empty_embeddings, untie_mapping
from .errors import CheckpointError, OneBitError, first_line
from .formats.checkpoint import read_config
from .registry import config_from_dict, get_handler


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if name == p or name.endswith("." + p) or fnmatch.fnmatch(name, p):
            return True
    return False


def _is_conv1d(mod: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear whose weight is stored ``[in, out]``."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and hasattr(mod, "nx")


def as_linear(mod: nn.Module) -> nn.Linear | None:
    """``mod`` as an ``nn.Linear`` (or None): Linear as is; ``Conv1D`` as a Linear whose weight
    is a view ``Conv1D.weight.T`` (no copy), so every method handler works on it unchanged."""
    if type(mod) is nn.Linear:
        return mod
    if not _is_conv1d(mod):
        return None
    lin = nn.Linear(mod.nx, mod.nf, bias=mod.bias is not None, device="meta")
    lin.weight = nn.Parameter(mod.weight.detach().T, requires_grad=False)
    if mod.bias is not None:
        lin.bias = nn.Parameter(mod.bias.detach(), requires_grad=False)
    return lin


def find_linears(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[tuple[str, nn.Linear]]:
    """The ``(name, module)`` pairs ``quantize`` would replace, in model order
    (``Conv1D`` layers come as Linear views, see :func:`as_linear`)."""
    embeds = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    embed_ids = {id(w) for w in embeds}
    embed_ptrs = {w.data_ptr() for w in embeds if w.device.type != "meta"}
    out = []
    for name, mod in model.named_modules():
        lin = as_linear(mod)
        if lin is None or _matches(name, skip) or id(mod.weight) in embed_ids \
                or (mod.weight.device.type != "meta" and mod.weight.data_ptr() in embed_ptrs):
            continue
        out.append((name, lin))
    return out


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``name`` of ``model`` (replacing what is there)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def prepare_empty(model: nn.Module, qconfig: dict, config=None) -> nn.Module:
    """Swap the linears named in a checkpoint's ``quantization_config`` for empty packed modules
    (``config``: the method's config already built from it, else built here)."""
    if config is None:
        config = config_from_dict(qconfig)
    handler = get_handler(config)
    modules = qconfig.get("modules")
    if not isinstance(modules, dict) or not modules:
        raise OneBitError("quantization_config lists no quantized modules")
    for name in modules:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            raise OneBitError(f"quantization_config names module '{name}', which the model does not have")
        lin = as_linear(lin)
        if lin is None:
            raise OneBitError(f"quantization_config names '{name}', which is not a linear layer")
        dtype = lin.weight.dtype
        new = handler.empty_module(name, lin.in_features, lin.out_features, lin.bias is not None, dtype)
        set_submodule(model, name, new)
    adapters = getattr(getattr(model, "config", None), "onebit_adapters", None)
    if adapters:  # LoRA adapters on the packed layers (onebit finetune): rebuilt here, filled by the loader
        from .nn.lora import attach_adapters  # onebit.nn loads the kernels: only when adapters exist

        attach_adapters(model, adapters)
    return model


@torch.no_grad()
def prepare_empty_embeddings(model: nn.Module, qc: dict) -> nn.Module:
    """Swap the modules a checkpoint's ``"embed"`` spec names for empty quantized ones (meta device;
    tied heads read their embedding's table).  A no-op for checkpoints without it."""
    built = empty_embeddings(model, qc)
    for name, new in built.items():
        set_submodule(model, name, new)
    if built:
        untie_mapping(model, set(built))
    return model


def empty_model(src, dtype: torch.dtype | None = None, buffers: bool = False,
                drop_quantization_config: bool = False) -> nn.Module:
    """The model skeleton a Hugging Face directory's ``config.json`` describes, without weights (the
    one meta-model builder: streaming, block streaming and checkpoint loading use it).  ``buffers``:
    parameters on the meta device but buffers real (rotary tables: what running a block needs);
    else everything on meta.  ``drop_quantization_config``: build the plain architecture of a packed
    checkpoint (its linears are swapped afterwards)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    src = Path(src)
    read_config(src)  # a clear error for a missing / broken config.json
    try:
        hf_config = AutoConfig.from_pretrained(str(src))
        if drop_quantization_config:
            hf_config.quantization_config = None
        kw = {"dtype": dtype} if dtype is not None else {}
        if buffers:
            with init_empty_weights():
                return AutoModelForCausalLM.from_config(hf_config, **kw)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config, **kw)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises: one line naming the file
        raise CheckpointError(f"'{src}/config.json' describes no model transformers can build: {first_line(e)}")
