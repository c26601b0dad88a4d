"""The bit ledger: what every stored tensor costs, counted honestly.

Each tensor costs ``numel × bits-per-element`` of its stored dtype (uint8
packed bits count 8 per byte, padding included).  A quantized linear's cost
is the sum of all its tensors (packed bits, scales, zero points, bias), and
*bits per original weight* divides that by ``out × in`` of the linear it
replaced.  For a 4096×4096 OneBit layer: 4096·512·8 + 2·4096·16 = 16,908,288
bits / 16,777,216 weights = 1.0078.

Quantized embeddings / heads (``quantization_config["embed"]``, :mod:`onebit.embeddings`) are
counted as ``embedding`` / ``head`` with their real bits (packed codes + fp16 scales); a tied head
has no tensors of its own.  *Bits per weight end to end* divides every stored bit (norms, biases,
embeddings and head included) by the parameters of the original model: ``out × in`` per
quantized linear, ``rows × cols`` per quantized embedding (a tied head counted once, as stored),
and the element count of every other tensor.

The ledger is computed from the tensors as they are written, so its total
equals the safetensors file size minus the header.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

CATEGORIES = ("quantized", "embedding", "head", "norm", "other")

_DTYPE_BITS = {
    "uint8": 8, "int8": 8, "bool": 8, "float16": 16, "bfloat16": 16, "float32": 32,
    "float64": 64, "int16": 16, "int32": 32, "int64": 64, "float8_e4m3fn": 8, "float8_e5m2": 8,
    # safetensors' names
    "U8": 8, "I8": 8, "BOOL": 8, "F16": 16, "BF16": 16, "F32": 32, "F64": 64, "I16": 16,
    "I32": 32, "I64": 64, "F8_E4M3": 8, "F8_E5M2": 8,
}


def dtype_bits(dtype) -> int:
    key = str(dtype).replace("torch.", "")
    if key not in _DTYPE_BITS:
        raise ValueError(f"unknown dtype {dtype}")
    return _DTYPE_BITS[key]


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str
    bits: int
    category: str
    module: str | None = None  # the quantized linear it belongs to, if any


@dataclass
class Ledger:
    entries: list[TensorEntry] = field(default_factory=list)
    #: quantized module name -> (out_features, in_features) of the original linear
    modules: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: quantized embedding / head module -> (rows, cols) of the original table (untied ones only)
    embed_modules: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the embedding quantization ("int4", ...), None when the embeddings keep the model dtype
    embed_kind: str | None = None

    @property
    def total_bits(self) -> int:
        return sum(e.bits for e in self.entries)

    def bits_by_category(self) -> dict[str, int]:
        out = {c: 0 for c in CATEGORIES}
        for e in self.entries:
            out[e.category] += e.bits
        return out

    @property
    def original_linear_weights(self) -> int:
        return sum(o * i for o, i in self.modules.values())

    @property
    def bits_per_linear_weight(self) -> float:
        n = self.original_linear_weights
        return self.bits_by_category()["quantized"] / n if n else float("nan")

    @property
    def original_weights(self) -> int:
        """Parameters of the original model the stored tensors stand for (see the module doc)."""
        n = self.original_linear_weights + sum(r * c for r, c in self.embed_modules.values())
        for e in self.entries:
            owner = e.module if e.module is not None else _owner(e.name, self.embed_modules)
            if owner is None or e.name.endswith(".bias"):
                k = 1
                for d in e.shape:
                    k *= int(d)
                n += k
        return n

    @property
    def bits_per_weight(self) -> float:
        """Bits per weight end to end: every stored bit over :attr:`original_weights`."""
        n = self.original_weights
        return self.total_bits / n if n else float("nan")

    def per_module(self) -> dict[str, tuple[int, float]]:
        """module -> (bits, bits per original weight)."""
        acc: dict[str, int] = {m: 0 for m in self.modules}
        for e in self.entries:
            if e.module is not None:
                acc[e.module] += e.bits
        return {m: (b, b / (self.modules[m][0] * self.modules[m][1])) for m, b in acc.items()}

    def summary(self) -> dict:
        cats = self.bits_by_category()
        return {
            "total_bits": self.total_bits,
            "total_bytes": self.total_bits // 8,
            "bits_by_category": cats,
            "quantized_modules": len(self.modules),
            "original_linear_weights": self.original_linear_weights,
            "bits_per_linear_weight": self.bits_per_linear_weight,
            "embed_quant": self.embed_kind or "none",
            "original_weights": self.original_weights,
            "bits_per_weight_end_to_end": self.bits_per_weight,
        }

    def format(self, per_tensor: bool = False) -> str:
        lines = []
        if per_tensor:
            lines.append(f"{'tensor':60s} {'shape':>18s} {'dtype':>9s} {'bits':>14s}  kind")
            for e in self.entries:
                lines.append(f"{e.name:60s} {str(list(e.shape)):>18s} {e.dtype:>9s} "
                             f"{e.bits:>14,d}  {e.category}")
            lines.append("")
        cats = self.bits_by_category()
        total = self.total_bits
        lines.append(f"{'kind':12s} {'bits':>16s} {'MiB':>10s} {'share':>7s}")
        for c in CATEGORIES:
            lines.append(f"{c:12s} {cats[c]:>16,d} {cats[c] / 8 / 2**20:>10.3f} "
                         f"{(cats[c] / total if total else 0):>7.1%}")
        lines.append(f"{'total':12s} {total:>16,d} {total / 8 / 2**20:>10.3f}")
        n = self.original_linear_weights
        if n:
            lines.append(f"quantized linears: {len(self.modules)} layers, {n:,d} original weights, "
                         f"{cats['quantized']:,d} bits -> {self.bits_per_linear_weight:.4f} bits/weight")
        m = self.original_weights
        if m:
            emb = self.embed_kind or "model dtype"
            lines.append(f"end to end: {m:,d} weights of the original model, {total:,d} bits -> "
                         f"{self.bits_per_weight:.4f} bits/weight (embeddings: {emb})")
        return "\n".join(lines)


def _owner(name: str, modules) -> str | None:
    prefix = name.rpartition(".")[0]
    return prefix if prefix in modules else None


def categorize(name: str, quantized_modules, embed_roles: dict[str, str] | None = None) -> tuple[str, str | None]:
    prefix = name.rpartition(".")[0]
    if prefix in quantized_modules:
        return "quantized", prefix
    if embed_roles and prefix in embed_roles:
        return embed_roles[prefix], None
    low = name.lower()
    if "embed" in low or low.startswith(("wte", "wpe")) or ".wte." in low or ".wpe." in low:
        return "embedding", None
    if low.startswith("lm_head") or ".lm_head." in low:
        return "head", None
    if "norm" in low or ".ln_" in low or low.startswith("ln_") or "layernorm" in low:
        return "norm", None
    return "other", None


def _embed_parts(embed: dict | None) -> tuple[dict[str, str], dict[str, tuple[int, int]], str | None]:
    """``(module -> role, untied module -> (rows, cols), kind)`` of a ``quantization_config["embed"]``."""
    if not isinstance(embed, dict) or not isinstance(embed.get("modules"), dict):
        return {}, {}, None
    roles, shapes = {}, {}
    for name, m in embed["modules"].items():
        roles[name] = m.get("role", "embedding")
        if m.get("tied_to") is None:
            shapes[name] = tuple(m["shape"])
    return roles, shapes, embed.get("kind")


def ledger_from_specs(specs: dict[str, tuple[tuple[int, ...], str]],
                      modules: dict[str, tuple[int, int]], embed: dict | None = None) -> Ledger:
    """Ledger from ``name -> (shape, dtype)`` (e.g. a safetensors header); ``embed`` is the
    ``quantization_config["embed"]`` entry, if any."""
    roles, shapes, kind = _embed_parts(embed)
    led = Ledger(modules={k: tuple(v) for k, v in modules.items()}, embed_modules=shapes, embed_kind=kind)
    for name, (shape, dtype) in specs.items():
        n = 1
        for d in shape:
            n *= int(d)
        cat, mod = categorize(name, led.modules, roles)
        led.entries.append(TensorEntry(name, tuple(shape), str(dtype).replace("torch.", ""),
                                       n * dtype_bits(dtype), cat, mod))
    return led


def ledger_from_state_dict(sd: dict[str, torch.Tensor], modules: dict[str, tuple[int, int]],
                           embed: dict | None = None) -> Ledger:
    return ledger_from_specs({k: (tuple(v.shape), v.dtype) for k, v in sd.items()}, modules, embed)


def onebit_layer_bits(out_features: int, in_features: int, scale_bits: int = 16) -> int:
    """Bits of one OneBit layer: packed signs (rows padded to bytes) + g + h."""
    return out_features * ((in_features + 7) // 8) * 8 + scale_bits * (in_features + out_features)
