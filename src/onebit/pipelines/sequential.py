"""The block-sequential path (GPTQ, AWQ): decoder blocks in order on calibration data.

The inputs of the first block are captured with a hook (:func:`onebit.methods.sequential.
capture_block_inputs`); for each block, the block runs once in full precision with every target's
inputs going to ``handler.observe`` (:func:`observe_block`), the handler packs the block's targets
(``handler.quantize_block``, which may fold scales into the block's norms), the packed modules are
swapped in, and the block runs again, quantized, to give the next block its inputs — so later blocks
see the errors of earlier ones.  Targets outside the blocks go to ``handler.quantize_outside``.

The streaming driver (``onebit.pipelines.streaming_blocks``) runs the same steps one block in memory.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import OneBitError
from ..methods.sequential import capture_block_inputs, run_block
from ..progress import Progress as tqdm
from ..registry import MethodHandler
from ..surgery import set_submodule
from ..walk import find_blocks

log = logging.getLogger("onebit")


def observe_block(handler: MethodHandler, block: nn.Module, modules: dict[str, nn.Module],
                  inputs: list[tuple[torch.Tensor, dict]]) -> None:
    """Run ``block`` on ``inputs`` once, giving each of ``modules``' inputs to ``handler.observe``."""
    handles = [mod.register_forward_pre_hook(lambda m, args, _n=name: handler.observe(_n, args[0]))
               for name, mod in modules.items()]
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()


def quantize_blocks(handler: MethodHandler, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                    ids: torch.Tensor, progress: bool = True, batch_size: int = 8) -> dict[str, nn.Module]:
    """``{name: packed}`` for ``targets``, each block quantized on the outputs of the quantized
    blocks before it (the packed modules are swapped in as they are made)."""
    method = handler.config.method
    names = [n for n, _ in targets]
    lins = dict(targets)
    found = find_blocks(model, names)
    if found is None:
        raise OneBitError(f"{method.upper()} found no decoder blocks (nn.ModuleList) holding the linear layers")
    bname, blocks = found
    prefix = f"{bname}." if bname else ""
    handler.begin_blocks(prefix)
    out: dict[str, nn.Module] = {}
    inputs = capture_block_inputs(model, blocks[0], ids, batch_size)
    for bi, block in enumerate(tqdm(blocks, desc=method, disable=not progress, unit="block")):
        bp = f"{prefix}{bi}."
        mine = {n: lins[n] for n in names if n.startswith(bp)}
        observe_block(handler, block, {n: model.get_submodule(n) for n in mine}, inputs)
        for n, m in handler.quantize_block(block, bp, mine).items():
            out[n] = m
            set_submodule(model, n, m)
        inputs = run_block(block, inputs)
    rest = [n for n in names if n not in out]
    if rest:
        log.warning("%s: %d linear layer(s) outside the decoder blocks quantized without calibration "
                    "inputs (round to nearest): %s", method.upper(), len(rest), ", ".join(rest[:4]))
        for n in rest:
            out[n] = handler.quantize_outside(n, lins[n])
    handler.end_blocks(out)
    return out
