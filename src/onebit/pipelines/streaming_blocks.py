"""Streaming quantization for methods that need calibration (GPTQ): one decoder block at a time.

GPTQ needs the inputs of every linear, computed by the already-quantized blocks
before it.  Here the model skeleton is built without weights; the embeddings
and the other tensors outside the decoder blocks are read from disk, the
calibration windows (from a training file named by ``--calib-file``; the
teacher cannot generate text without the whole model in memory) are run up
to the first block, and then for each block in turn:

1. its tensors are read from the checkpoint,
2. each target linear's inputs go to ``handler.observe`` while the block runs (GPTQ: Hessians),
3. the block's linears are quantized (``handler.quantize_block``) and swapped in,
4. its packed tensors and the block's other tensors are appended to the output shards,
5. the block is run again, quantized, to give the next block its inputs,
6. the block goes back to the meta device (freed).

Peak memory: the tensors outside the blocks + one block + the calibration
activations (``calib_samples × calib_seqlen × hidden`` fp32, twice).  The
output has the input's sharding (each tensor goes to the shard its source
tensor came from) and equals the in-memory ``quantize()`` with the same
calibration windows (tested).
"""
from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import OneBitError
from ..surgery import as_linear, empty_model, set_submodule
from ..formats.checkpoint import atomic_dir, weight_files
from ..formats.ledger import Ledger, ledger_from_specs
from ..formats.sharded import SafetensorsReader, ShardedOutput
from ..calibration import file_samples
from ..methods.sequential import capture_block_inputs, find_blocks, run_block
from ..progress import Progress as tqdm
from ..registry import get_handler
from ..tokenizers import context_length, load_tokenizer
from .sequential import observe_block
from .streaming import plan_tensors

log = logging.getLogger("onebit")


def _skeleton(src: Path) -> nn.Module:
    """Parameters on meta, buffers (rotary tables) real: what running the embeddings needs."""
    return empty_model(src, buffers=True)


# --------------------------------------------------------------------------- a checkpoint, block by block
def assign_tensor(model: nn.Module, name: str, t: torch.Tensor) -> None:
    """Put ``t`` in place of ``model``'s parameter or buffer ``name`` (a frozen parameter stays one)."""
    parent, _, leaf = name.rpartition(".")
    mod = model.get_submodule(parent) if parent else model
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(t, requires_grad=False)
    else:
        mod._buffers[leaf] = t


class BlockTensors:
    """A safetensors checkpoint's tensors grouped by decoder block, read on demand into a skeleton.

    ``where``: model name -> ``(file, checkpoint name)`` (:func:`~onebit.pipelines.streaming.plan_tensors`);
    ``prefix``: the blocks' (``"model.layers."``).  Floating tensors are converted to ``dtype`` as read,
    and every tensor moved to ``device`` (when given).  Streaming GPTQ and streamed block-wise
    reconstruction (:mod:`onebit.distill.streaming`) read the teacher through it."""

    def __init__(self, readers: dict, where: dict[str, tuple[Path, str]], prefix: str,
                 dtype: torch.dtype | None = None, device: str | torch.device | None = None):
        self.readers, self.where, self.prefix = readers, where, prefix
        self.dtype, self.device = dtype, device

    def read(self, mk: str) -> torch.Tensor:
        f, k = self.where[mk]
        t = self.readers[f].read(k)
        t = t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t
        return t if self.device is None else t.to(self.device)

    def block_of(self, mk: str) -> int | None:
        """The index of the decoder block holding tensor ``mk``, None outside the blocks."""
        head = mk[len(self.prefix):].split(".", 1)[0] if mk.startswith(self.prefix) else ""
        return int(head) if head.isdigit() else None

    def load(self, model: nn.Module, block: int | None) -> dict[str, torch.Tensor]:
        """Read the tensors of decoder block ``block`` (None: those outside the blocks) into ``model``;
        return them by model name, in checkpoint order."""
        got = {}
        for mk in self.where:
            if self.block_of(mk) == block:
                got[mk] = self.read(mk)
                assign_tensor(model, mk, got[mk])
        return got


# --------------------------------------------------------------------------- the loop
@torch.no_grad()
def stream_quantize_blocks(src: str | os.PathLike, out: str | os.PathLike, config: QuantConfig,
                           dtype: torch.dtype | None = None, overwrite: bool = False,
                           progress: bool = True, batch_size: int = 8) -> Ledger:
    """GPTQ-style quantization of the checkpoint in ``src``, block by block; return the ledger."""
    config.validate()
    handler = get_handler(config)
    if not hasattr(handler, "gptq_linear"):
        raise OneBitError(f"method '{config.method}' has no block-by-block streaming path")
    if getattr(config, "static_acts", False):
        raise OneBitError("static activation scales need the whole model; use --no-streaming")
    if not getattr(config, "calib_file", None):
        raise OneBitError("streaming GPTQ needs --calib-file (a training text): the teacher cannot "
                          "generate calibration text without the whole model in memory")
    src = Path(src)
    files = weight_files(src)
    readers: dict[Path, SafetensorsReader] = {}
    try:
        for f in files:
            readers[f] = SafetensorsReader(f)
        model = _skeleton(src)
        targets, where = plan_tensors(src, readers, model, config)
        names = list(targets)
        found = find_blocks(model, names)
        if found is None:
            raise OneBitError(f"'{src}': no decoder blocks (nn.ModuleList) hold the linear layers")
        bname, blocks = found
        ckpt = BlockTensors(readers, where, f"{bname}." if bname else "", dtype)
        outside = ckpt.load(model, None)
        model.tie_weights()
        tok = load_tokenizer(str(src))
        seqlen = min(config.calib_seqlen, context_length(model))
        ids = file_samples(tok, config.calib_file, config.calib_samples, seqlen, config.calib_seed)

        modules = {n: [lin.out_features, lin.in_features] for n, lin in targets.items()}
        qc = config.to_dict()
        qc["modules"] = modules
        with atomic_dir(out, overwrite) as tmp:
            output = ShardedOutput(tmp, src, where, qc)

            def write_quantized(n: str, packed: nn.Module) -> None:
                for key, v in packed.state_dict().items():
                    output.write(f"{n}.{key}", f"{n}.weight", v)

            for mk, t in outside.items():
                if mk.rpartition(".")[0] not in targets:
                    output.write(mk, mk, t)
            inputs = capture_block_inputs(model, blocks[0], ids, batch_size)
            handler.begin_blocks(ckpt.prefix)
            for bi in tqdm(range(len(blocks)), desc=f"stream-gptq [{config.method}]", unit="block",
                           disable=not progress):
                mine_keys = list(ckpt.load(model, bi))
                block = blocks[bi]
                bp = f"{ckpt.prefix}{bi}."
                mine = {n: model.get_submodule(n) for n in names if n.startswith(bp)}
                observe_block(handler, block, mine, inputs)
                for n, packed in handler.quantize_block(block, bp, {n: as_linear(m) for n, m in mine.items()}).items():
                    set_submodule(model, n, packed)
                    write_quantized(n, packed)
                for mk in mine_keys:
                    owner = mk.rpartition(".")[0]
                    if owner not in mine:
                        output.write(mk, mk, ckpt.read(mk))
                inputs = run_block(block, inputs)
                blocks[bi] = block.to("meta")
                del block
                gc.collect()
            # target linears outside the blocks (rare): H = I, i.e. round to nearest
            for n in (n for n in names if ckpt.block_of(f"{n}.weight") is None):
                write_quantized(n, handler.quantize_outside(n, as_linear(model.get_submodule(n))))
            handler.end_blocks({})
            specs = output.finish(dtype)
    finally:
        for r in readers.values():
            r.close()
    log.info("wrote %s", out)
    return ledger_from_specs(specs, modules)
