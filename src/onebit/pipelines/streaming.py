"""Streaming quantization: a safetensors checkpoint, one tensor at a time.

For models too big to load: read one tensor from disk, quantize it (SVID,
pack), append it to the output shard, free it.  The model itself is only
built on the meta device (no memory), to know which tensors are the linears
``onebit.quantize`` would replace (same ``find_linears``, same ``skip``, GPT-2's
``Conv1D`` transposed), so the output equals the in-memory path's tensor for
tensor (tested).  Peak memory is about one fp32 copy of the largest linear
plus the method's work on it, whatever the model size.

Input: a Hugging Face model directory with ``model.safetensors`` or shards
named by ``model.safetensors.index.json`` (no pickle).  Output: the same
sharding (shard ``i`` holds the quantized tensors of input shard ``i``, same
file names, an index when the input had one), ``config.json`` with
``quantization_config``, ``generation_config.json`` and tokenizer files
copied; written in a temporary directory renamed into place at the end.

Tensors are read and written one at a time by :mod:`onebit.formats.sharded` (storage); this
module is the driver.

Methods that need calibration activations (GPTQ) run block by block instead,
with activations carried between blocks: ``pipelines/streaming_blocks.py``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import CheckpointError, OneBitError
from ..formats.checkpoint import atomic_dir, weight_files
from ..formats.ledger import Ledger, ledger_from_specs
from ..formats.sharded import SafetensorsReader, ShardedOutput
from ..progress import Progress as tqdm
from ..registry import get_handler
from ..surgery import _is_conv1d, empty_model, find_linears

log = logging.getLogger("onebit")

#: checkpoints at least this big stream by default (methods without calibration, local safetensors)
AUTO_STREAM_BYTES = 2 * 2**30


# --------------------------------------------------------------------------- the plan
def should_stream(model: str, config: QuantConfig, requested: bool | None) -> bool:
    """``--streaming`` as given; by default on for local safetensors checkpoints of at least
    :data:`AUTO_STREAM_BYTES` when the method needs no calibration."""
    if requested is not None:
        return requested
    p = Path(model).expanduser()
    if get_handler(config).needs_calibration or not (p / "config.json").is_file():
        return False
    try:
        files = weight_files(p)
    except CheckpointError:
        return False
    return all(f.is_file() for f in files) and sum(f.stat().st_size for f in files) >= AUTO_STREAM_BYTES


def meta_model(src: Path) -> nn.Module:
    """The model skeleton on the meta device (no weights, no memory)."""
    return empty_model(src)


def _model_name(key: str, model_keys: set[str], prefix: str) -> str | None:
    if key in model_keys:
        return key
    if prefix and f"{prefix}.{key}" in model_keys:
        return f"{prefix}.{key}"
    return None


def plan_tensors(src: Path, readers: dict, model: nn.Module, config: QuantConfig):
    """``(targets, where)``: the linears to quantize (``name -> module``) and, for every model
    tensor to write, ``model name -> (file, checkpoint name)`` (tied copies left out).
    Shapes are checked against the model's config; a missing linear weight is an error."""
    targets = {name: lin for name, lin in find_linears(model, config.skip)}
    if not targets:
        raise OneBitError(f"'{src}': model has no linear layers to quantize (after skipping "
                          f"{', '.join(config.skip) or 'nothing'})")
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model_keys = set(model_shapes)
    prefix = getattr(model, "base_model_prefix", "")
    where: dict[str, tuple[Path, str]] = {}  # model name -> (file, checkpoint name)
    for f, r in readers.items():
        for k in r.names():
            mk = _model_name(k, model_keys, prefix)
            if mk is None:
                log.warning("'%s': tensor '%s' is not part of the model; dropped", f, k)
            elif mk not in where:
                where[mk] = (f, k)
    for mk, (f, k) in where.items():
        shape = tuple(readers[f].specs[k]["shape"])
        if shape != model_shapes[mk]:
            raise CheckpointError(f"'{f}': tensor '{k}' has shape {list(shape)}, the model's "
                                  f"config.json says {list(model_shapes[mk])}")
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        if target in where and source in where:
            del where[target]  # tied weights are stored once
    for name, lin in targets.items():
        for part in ("weight",) + (("bias",) if lin.bias is not None else ()):
            if f"{name}.{part}" not in where:
                raise CheckpointError(f"'{src}' has no tensor for '{name}.{part}'")
    return targets, where


# --------------------------------------------------------------------------- the loop
@torch.no_grad()
def stream_quantize(src: str | os.PathLike, out: str | os.PathLike, config: QuantConfig,
                    dtype: torch.dtype | None = None, overwrite: bool = False,
                    progress: bool = True) -> Ledger:
    """Quantize the checkpoint in ``src`` to ``out`` one tensor at a time; return the ledger."""
    config.validate()
    handler = get_handler(config)
    if handler.needs_calibration:
        raise OneBitError(f"method '{config.method}' needs calibration activations; streaming "
                          "quantization supports methods without calibration only (use --no-streaming)")
    src = Path(src)
    files = weight_files(src)
    readers = {}
    try:
        for f in files:  # every header validated before anything is written
            readers[f] = SafetensorsReader(f)
        model = meta_model(src)
        targets, where = plan_tensors(src, readers, model, config)
        modules = {name: [lin.out_features, lin.in_features] for name, lin in targets.items()}
        qc = config.to_dict()
        qc["modules"] = modules
        biases = {f"{name}.bias" for name in targets}
        todo = [(f, mk, k) for mk, (f, k) in where.items() if mk not in biases]
        order = {f: i for i, f in enumerate(files)}
        todo.sort(key=lambda t: (order[t[0]], readers[t[0]].specs[t[2]]["data_offsets"][0]))

        with atomic_dir(out, overwrite) as tmp:
            output = ShardedOutput(tmp, src, where, qc)
            for f, mk, k in tqdm(todo, desc=f"stream-quantize [{config.method}]", unit="tensor",
                                 disable=not progress):
                t = readers[f].read(k)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                name = mk[:-len(".weight")] if mk.endswith(".weight") else None
                if name in targets:
                    if not torch.isfinite(t).all():
                        raise OneBitError(f"'{f}': tensor '{k}' contains NaN or Inf; refusing to quantize it")
                    lin = _as_linear(t, _is_conv1d(model.get_submodule(name)), where.get(f"{name}.bias"),
                                     readers, dtype)
                    for key, v in handler.quantize_linear(name, lin).state_dict().items():
                        output.write(f"{name}.{key}", mk, v)
                    del lin
                else:
                    output.write(mk, mk, t)
                del t
            specs = output.finish(dtype)
    finally:
        for r in readers.values():
            r.close()
    log.info("wrote %s", out)
    return ledger_from_specs(specs, modules)


def _as_linear(w: torch.Tensor, conv1d: bool, bias_at, readers, dtype) -> nn.Linear:
    """An ``nn.Linear`` holding ``w`` (Conv1D weights are stored [in, out]: transposed view)."""
    if conv1d:
        w = w.T
    out_f, in_f = w.shape
    lin = nn.Linear(in_f, out_f, bias=bias_at is not None, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    if bias_at is not None:
        b = readers[bias_at[0]].read(bias_at[1])
        lin.bias = nn.Parameter(b.to(dtype) if dtype is not None else b, requires_grad=False)
    return lin
