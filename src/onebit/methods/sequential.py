"""Running a decoder block by block on calibration data (the block-sequential pipeline,
:mod:`onebit.pipelines.sequential`, and block-wise distillation).

:func:`~onebit.walk.find_blocks` (re-exported here) locates the ``nn.ModuleList`` of decoder
blocks holding the target linears; :func:`capture_block_inputs` runs the model up to the first
block and records each batch's ``(hidden_states, kwargs)`` (attention mask,
rotary embeddings, ... as the model passes them); :func:`run_block` runs a
block on those inputs.  What is accumulated from a block's inputs is the
method's (``handler.observe``: GPTQ's Hessians, AWQ's input statistics).
"""
from __future__ import annotations

import torch
from torch import nn

from ..walk import find_blocks  # noqa: F401  (it lived here)


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module, ids: torch.Tensor,
                         batch_size: int = 8) -> list[tuple[torch.Tensor, dict]]:
    """``[(hidden_states, kwargs)]`` per batch as ``block`` receives them."""
    caught: list[tuple[torch.Tensor, dict]] = []

    def pre_hook(mod, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        caught.append((hs, kw))
        raise _Stop

    h = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for i in range(0, ids.shape[0], batch_size):
            try:
                model(ids[i:i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
    return caught


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
    outs = []
    for hs, kw in inputs:
        o = block(hs, **kw)
        outs.append((o[0] if isinstance(o, (tuple, list)) else o, kw))
    return outs
