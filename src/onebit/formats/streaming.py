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

Reading and writing safetensors here is done by hand (the format is an
8-byte header length, a JSON header, then the raw bytes) so that a tensor is
read with one ``readinto`` (no mmap whose pages would count as resident for
the whole shard) and written without holding the shard in memory: the data
goes to a side file and the header is prepended when the shard is closed.

Methods that need calibration activations (GPTQ) run block by block instead,
with activations carried between blocks: ``formats/streaming_blocks.py``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..config import QuantConfig, dtype_name
from ..errors import CheckpointError, OneBitError, first_line
from ..surgery import _is_conv1d, find_linears
from .checkpoint import (INDEX_NAME, WEIGHTS_NAME, atomic_dir, copy_tokenizer_files, read_config,
                         read_safetensors_header, weight_files)
from .ledger import Ledger, ledger_from_specs

log = logging.getLogger("onebit")

#: checkpoints at least this big stream by default (methods without calibration, local safetensors)
AUTO_STREAM_BYTES = 2 * 2**30

_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
           "I64": torch.int64, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
           "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_CODES = {v: k for k, v in _DTYPES.items()}


# --------------------------------------------------------------------------- raw safetensors I/O
class SafetensorsReader:
    """One tensor at a time from a safetensors file whose header was validated."""

    def __init__(self, file: str | os.PathLike):
        self.file = Path(file)
        self.header_len, header = read_safetensors_header(self.file)
        self.specs = {k: v for k, v in header.items() if k != "__metadata__"}
        self._f = open(self.file, "rb")

    def names(self) -> list[str]:
        """Tensor names in file order (sequential reads)."""
        return sorted(self.specs, key=lambda k: self.specs[k]["data_offsets"][0])

    def read(self, name: str) -> torch.Tensor:
        spec = self.specs[name]
        s, e = spec["data_offsets"]
        dtype = _DTYPES[spec["dtype"]]
        if e == s:
            return torch.empty(spec["shape"], dtype=dtype)
        buf = bytearray(e - s)
        self._f.seek(8 + self.header_len + s)
        if self._f.readinto(buf) != e - s:
            raise CheckpointError(f"'{self.file}' is truncated (tensor '{name}')")
        return torch.frombuffer(buf, dtype=dtype).reshape(spec["shape"])

    def close(self) -> None:
        self._f.close()


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor; only the header is kept in memory."""

    def __init__(self, file: str | os.PathLike, metadata: dict[str, str] | None = None):
        self.file = Path(file)
        self.metadata = dict(metadata or {})
        self._data_path = self.file.with_name(self.file.name + ".data")
        self._data = open(self._data_path, "wb")
        self.entries: dict[str, dict] = {}
        self.nbytes = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self.entries:
            raise ValueError(f"tensor '{name}' written twice")
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        n = raw.numel()
        if n:
            self._data.write(memoryview(raw.numpy()))
        self.entries[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [self.nbytes, self.nbytes + n]}
        self.nbytes += n

    def close(self) -> None:
        self._data.close()
        header = {"__metadata__": self.metadata, **self.entries} if self.metadata else dict(self.entries)
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)  # data starts 8-byte aligned, as safetensors writes it
        with open(self.file, "wb") as out, open(self._data_path, "rb") as data:
            out.write(len(hb).to_bytes(8, "little"))
            out.write(hb)
            shutil.copyfileobj(data, out, 16 * 2**20)
        self._data_path.unlink()

    def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (tuple(v["shape"]), v["dtype"]) for k, v in self.entries.items()}


# --------------------------------------------------------------------------- the plan
def should_stream(model: str, config: QuantConfig, requested: bool | None) -> bool:
    """``--streaming`` as given; by default on for local safetensors checkpoints of at least
    :data:`AUTO_STREAM_BYTES` when the method needs no calibration."""
    from ..registry import get_handler

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
    from transformers import AutoConfig, AutoModelForCausalLM

    read_config(src)  # clear error for a missing / broken config.json
    try:
        hf_config = AutoConfig.from_pretrained(str(src))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, OSError, TypeError) as e:
        first = first_line(e)
        raise CheckpointError(f"'{src}/config.json': unsupported model: {first}")


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
    from ..progress import Progress as tqdm

    from ..registry import get_handler

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
        sharded = (src / INDEX_NAME).is_file()
        todo = [(f, mk, k) for mk, (f, k) in where.items() if mk not in biases]
        order = {f: i for i, f in enumerate(files)}
        todo.sort(key=lambda t: (order[t[0]], readers[t[0]].specs[t[2]]["data_offsets"][0]))

        done: list[SafetensorsWriter] = []
        weight_map: dict[str, str] = {}
        meta = {"format": "pt", "onebit_format_version": str(qc["format_version"])}
        with atomic_dir(out, overwrite) as tmp:
            writer, writer_src = None, None
            for f, mk, k in tqdm(todo, desc=f"stream-quantize [{config.method}]", unit="tensor",
                                 disable=not progress):
                if writer_src != f:
                    if writer is not None:
                        writer.close()
                        done.append(writer)
                    writer_src = f
                    writer = SafetensorsWriter(tmp / (f.name if sharded else WEIGHTS_NAME), meta)
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
                        writer.add(f"{name}.{key}", v)
                        weight_map[f"{name}.{key}"] = writer.file.name
                    del lin
                else:
                    writer.add(mk, t)
                    weight_map[mk] = writer.file.name
                del t
            if writer is not None:
                writer.close()
                done.append(writer)
            specs = finish_output(tmp, done, weight_map, sharded, src, qc, dtype)
    finally:
        for r in readers.values():
            r.close()
    log.info("wrote %s", out)
    return ledger_from_specs(specs, modules)


def finish_output(tmp: Path, writers, weight_map: dict[str, str], sharded: bool, src: Path, qc: dict,
                  dtype) -> dict[str, tuple]:
    """After the (closed) ``writers``: the shard index if ``sharded``, the configs; return the tensor specs."""
    specs: dict[str, tuple] = {}
    total = 0
    for w in writers:
        specs.update(w.specs())
        total += w.nbytes
    if sharded:
        write_index(tmp, weight_map, total)
    _write_configs(src, tmp, qc, dtype)
    return specs


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


def write_index(tmp: Path, weight_map: dict[str, str], total: int) -> None:
    """``model.safetensors.index.json`` for the shards written in ``tmp``."""
    (tmp / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2) + "\n")


def _write_configs(src: Path, tmp: Path, qc: dict, dtype) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(src)).to_dict()
    cfg["quantization_config"] = qc
    if dtype is not None:
        cfg["dtype"] = dtype_name(dtype)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    if (src / "generation_config.json").is_file():
        shutil.copyfile(src / "generation_config.json", tmp / "generation_config.json")
    copy_tokenizer_files(src, tmp)
    if not any((tmp / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        log.warning("'%s' has no tokenizer files; the checkpoint has none either", src)
