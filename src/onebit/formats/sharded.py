"""Raw safetensors I/O, one tensor at a time, and the files around a sharded checkpoint.

Reading and writing safetensors here is done by hand (the format is an 8-byte header length, a JSON
header, then the raw bytes) so that a tensor is read with one ``readinto`` (no mmap whose pages would
count as resident for the whole shard) and written without holding the shard in memory: the data
goes to a side file and the header is prepended when the shard is closed.  Storage only: the
streaming quantize drivers that use it are in :mod:`onebit.pipelines.streaming`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..config import dtype_name
from ..errors import CheckpointError
from .checkpoint import INDEX_NAME, WEIGHTS_NAME, copy_tokenizer_files, read_safetensors_header

log = logging.getLogger("onebit")

#: safetensors dtype codes -> torch dtypes (one table: the streaming I/O and the loader use it)
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
           "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32,
           "I64": torch.int64, "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32,
           "U64": torch.uint64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


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
        dtype = SAFETENSORS_DTYPES[spec["dtype"]]
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


class ShardedOutput:
    """The output shards of a streamed conversion in ``tmp``: each tensor goes to the shard named like
    its source tensor's file (one ``model.safetensors`` when ``src`` is not sharded)."""

    def __init__(self, tmp: Path, src: Path, where: dict[str, tuple[Path, str]], qc: dict):
        self.tmp, self.src, self.where, self.qc = tmp, src, where, qc
        self.sharded = (src / INDEX_NAME).is_file()
        meta = {"format": "pt", "onebit_format_version": str(qc["format_version"])}
        self.writers = {f: SafetensorsWriter(tmp / (f.name if self.sharded else WEIGHTS_NAME), meta)
                        for f in dict.fromkeys(f for f, _ in where.values())}
        self.weight_map: dict[str, str] = {}

    def write(self, mk: str, src_mk: str, t: torch.Tensor) -> None:
        """Append ``t`` as ``mk`` to the shard of source tensor ``src_mk``."""
        w = self.writers[self.where[src_mk][0]]
        w.add(mk, t)
        self.weight_map[mk] = w.file.name

    def finish(self, dtype: torch.dtype | None) -> dict:
        """Close the shards and write the index and config (:func:`~onebit.formats.sharded.finish_output`)."""
        for w in self.writers.values():
            w.close()
        return finish_output(self.tmp, self.writers.values(), self.weight_map, self.sharded, self.src,
                             self.qc, dtype)


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
