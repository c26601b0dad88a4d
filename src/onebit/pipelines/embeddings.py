"""The quantized embedding / head driver: build the modules (:mod:`onebit.embeddings`), swap them in
(:func:`onebit.surgery.set_submodule`), record the ``"embed"`` spec in ``quantization_config``."""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..embeddings import EmbedQuantConfig, quantized_embeddings, record_spec, untie_mapping
from ..surgery import set_submodule

log = logging.getLogger("onebit")


@torch.no_grad()
def quantize_embeddings(model: nn.Module, config: "EmbedQuantConfig | str | None") -> dict | None:
    """Swap the input embedding (and the head) for quantized modules, in place.

    Returns the ``"embed"`` spec (None for ``kind="none"``); when the model carries a onebit
    ``quantization_config`` the spec is recorded there and its format version raised to 2.
    """
    spec, new = quantized_embeddings(model, config)
    if spec is None:
        return None
    for name, mod in new.items():
        set_submodule(model, name, mod)
    untie_mapping(model, set(spec["modules"]))
    record_spec(model, spec)
    tied = any(m.get("tied_to") for m in spec["modules"].values())
    log.info("quantized %s with %s (group %d)%s", ", ".join(spec["modules"]), spec["kind"],
             spec["group_size"], " (head tied)" if tied else "")
    return spec
