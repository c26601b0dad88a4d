"""Read a GGUF file's header: metadata and tensor table, without the tensor data.

The ``gguf`` package's reader refuses files holding tensor types newer than itself (Q2_0 in
gguf 0.19), so ``onebit info`` and the truncation check read the header here: it is a short,
fixed layout (magic, version, counts, typed key/values, then name/dims/type/offset per tensor).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OneBitError
from .gguf_blocks import TYPE_NAMES, TYPES

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]      # ggml order: ne[0] (row length) first
    type_id: int
    offset: int

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.type_id) or _gguf_name(self.type_id)

    @property
    def n_weights(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_bytes(self) -> int | None:
        size = _type_size(self.type_id)
        if size is None:
            return None
        block, nbytes = size
        return self.n_weights // block * nbytes


@dataclass
class GGUFHeader:
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_start: int = 0

    @property
    def needed_bytes(self) -> int:
        ends = [self.data_start + t.offset + (t.n_bytes or 0) for t in self.tensors]
        return max(ends, default=self.data_start)


def _gguf_name(tid: int) -> str:
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(tid).name.lower()
    except (ImportError, ValueError):
        return f"type{tid}"


def _type_size(tid: int) -> tuple[int, int] | None:
    name = TYPE_NAMES.get(tid)
    if name is not None:
        return TYPES[name][1], TYPES[name][2]
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        return GGML_QUANT_SIZES[GGMLQuantizationType(tid)]
    except (ImportError, ValueError, KeyError):
        return None


class _Buf:
    def __init__(self, f):
        self.f = f

    def read(self, fmt: str):
        n = struct.calcsize(fmt)
        b = self.f.read(n)
        if len(b) != n:
            raise OneBitError("the file ends inside its header (truncated)")
        return struct.unpack(fmt, b)[0]

    def string(self) -> str:
        n = self.read("<Q")
        if n > 1 << 24:
            raise OneBitError(f"implausible string length {n} in the header")
        b = self.f.read(n)
        if len(b) != n:
            raise OneBitError("the file ends inside its header (truncated)")
        return b.decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True):
        if vtype in _SCALARS:
            return self.read(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            itype, n = self.read("<I"), self.read("<Q")
            items = [self.value(itype) for _ in range(n)]
            return items if keep else len(items)
        raise OneBitError(f"unknown metadata value type {vtype}")


def read_gguf_header(path: str | Path, keep_arrays: bool = False) -> GGUFHeader:
    """The header of a GGUF file (arrays such as the token list kept only if asked)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise OneBitError(f"'{path}' is not a GGUF file (bad magic)")
        b = _Buf(f)
        h = GGUFHeader(version=b.read("<I"))
        if h.version not in (2, 3):
            raise OneBitError(f"'{path}': unsupported GGUF version {h.version}")
        n_tensors, n_kv = b.read("<Q"), b.read("<Q")
        for _ in range(n_kv):
            key = b.string()
            vtype = b.read("<I")
            h.metadata[key] = b.value(vtype, keep=keep_arrays or vtype != 9)
        for _ in range(n_tensors):
            name = b.string()
            nd = b.read("<I")
            shape = tuple(b.read("<Q") for _ in range(nd))
            h.tensors.append(GGUFTensor(name, shape, b.read("<I"), b.read("<Q")))
        align = int(h.metadata.get("general.alignment", 32))
        pos = f.tell()
        h.data_start = (pos + align - 1) // align * align
    return h


def check_gguf_file(path: str | Path) -> GGUFHeader:
    """The header, after checking the file holds all the tensor data it announces."""
    path = Path(path)
    try:
        h = read_gguf_header(path)
    except OneBitError as e:
        raise OneBitError(f"'{path}' is not a readable GGUF file: {e}")
    size = path.stat().st_size
    if h.needed_bytes > size:
        raise OneBitError(f"'{path}' is truncated: its tensors need {h.needed_bytes:,} bytes, the file "
                          f"has {size:,}")
    return h


def summarize(h: GGUFHeader, per_tensor: bool = False) -> str:
    """Tensor types and bits per weight, end to end and for the blocks' linears."""
    lines = [f"architecture {h.metadata.get('general.architecture', '?')}, {len(h.tensors)} tensors"]
    by: dict[str, list[int]] = {}
    for t in h.tensors:
        e = by.setdefault(t.type_name, [0, 0, 0])
        e[0] += 1
        e[1] += t.n_weights
        e[2] += t.n_bytes or 0
        if per_tensor:
            lines.append(f"  {t.name:32s} {t.type_name:6s} {'x'.join(map(str, t.shape)):>12s}")
    for name, (n, w, nb) in sorted(by.items()):
        lines.append(f"  {name:6s} {n:4d} tensors {w:>13,d} weights {nb * 8 / w:7.4f} bits/weight")
    total_w = sum(t.n_weights for t in h.tensors)
    total_b = sum(t.n_bytes or 0 for t in h.tensors)
    lin = [t for t in h.tensors if t.name.startswith("blk.") and t.name.endswith(".weight")
           and "norm" not in t.name]
    lw, lb = sum(t.n_weights for t in lin), sum(t.n_bytes or 0 for t in lin)
    if lw:
        lines.append(f"  linears of the blocks: {lb * 8 / lw:.4f} bits/weight")
    lines.append(f"  end to end (embeddings, head and norms included): {total_b * 8 / max(total_w, 1):.4f} "
                 f"bits/weight, {total_b / 2**20:.2f} MiB of tensor data")
    return "\n".join(lines)
