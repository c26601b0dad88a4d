"""Block quantization of embedding tables (and untied heads): pure functions, no modules, no I/O.

A table ``W [rows, cols]`` (one row per token) is cut into groups of ``group`` consecutive
columns of each row (the last group of a row may be shorter); each group gets one fp16 scale
``d``.  Codes are unsigned integers ``q`` stored with ``formats.packing.pack(q, bits)``; the
value of a code is ``(q - zero) · d`` with the implicit ``zero = 2**(bits-1)`` — the convention
of ``onebit.methods.quant`` (symmetric codes), so :func:`onebit.methods.quant.dequantize_codes`
and the ``quant_linear`` op read them as they are.

Kinds (the rounding is llama.cpp's reference rounding, bit for bit, so a table quantized here
and one quantized by ``gguf.quants`` / llama.cpp from the same floats are equal):

=====  ====  =====  =========================================================  ==========
kind   bits  group  rule (per group)                                           llama.cpp
=====  ====  =====  =========================================================  ==========
int8   8     32     ``d = max|w| / 127``, ``q - 128 = roundf(w / d)``           Q8_0
int4   4     32     ``m`` = the value of largest magnitude, ``d = m / -8``,     Q4_0
                    ``q = min(15, trunc(w / d + 8.5))``
int2   2     32     the Q4_0 rule with 2 bits: ``d = m / -2``,                  (none)
                    ``q = min(3, trunc(w / d + 2.5))``
q1     1     128    ``d = mean|w|``, ``q = [w >= 0]``, value ``(2q - 1) · d``   Q1_0
=====  ====  =====  =========================================================  ==========

(``roundf`` rounds half away from zero; ``1 / d`` is computed once in float32 and codes are
``w · (1/d)``, as ggml does; ``d`` is stored as fp16 after the codes are computed, again as
ggml does.)  llama.cpp needs rows of a multiple of the block (32 or 128) and exactly that group;
other groups run in onebit only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: kind -> (bits, default group)
KINDS: dict[str, tuple[int, int]] = {"int8": (8, 32), "int4": (4, 32), "int2": (2, 32), "q1": (1, 128)}
#: the llama.cpp type each kind is exactly, when its group is the type's block
GGML_TYPE = {"int8": ("q8_0", 32), "int4": ("q4_0", 32), "q1": ("q1_0", 128)}


def check_kind(kind: str, group: int, cols: int | None = None) -> int:
    """Bits of ``kind``; ``ValueError`` (one line) for an unknown kind or a bad group."""
    if kind not in KINDS:
        raise ValueError(f"unknown embedding quantization '{kind}'; choose one of none, {', '.join(KINDS)}")
    if not isinstance(group, int) or isinstance(group, bool) or group < 1:
        raise ValueError(f"embedding group size must be a positive integer, got {group!r}")
    if kind == "q1" and group % 8:
        raise ValueError(f"q1 embedding groups must be a multiple of 8 weights, got {group}")
    if cols is not None and group > cols:
        raise ValueError(f"embedding group size {group} is larger than the row ({cols} weights)")
    return KINDS[kind][0]


def num_groups(cols: int, group: int) -> int:
    return (cols + group - 1) // group


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """``w [rows, cols]`` as float32 ``[rows, ng, group]``, the last group zero-padded."""
    rows, cols = w.shape
    ng = num_groups(cols, group)
    return F.pad(w.float(), (0, ng * group - cols)).reshape(rows, ng, group)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's ``roundf`` (half away from zero), as ``gguf.quants.np_roundf`` computes it."""
    a = x.abs()
    f = torch.floor(a)
    return torch.sign(x) * (f + torch.floor(2 * (a - f)))


def _inv(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


@torch.no_grad()
def quantize_rows(w: torch.Tensor, kind: str, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes uint8 [rows, cols], scales fp16 [rows, ceil(cols / group)])`` of a 2-D table."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D table, got shape {list(w.shape)}")
    group = KINDS.get(kind, (0, 0))[1] if group is None else group
    bits = check_kind(kind, group, w.shape[1])
    rows, cols = w.shape
    g = _grouped(w, group)
    if kind == "q1":
        counts = torch.full((g.shape[1],), float(group), device=w.device)
        counts[-1] = cols - (g.shape[1] - 1) * group
        d = g.abs().sum(-1) / counts
        q = (g >= 0).to(torch.uint8)
    elif kind == "int8":
        d = g.abs().amax(-1) / 127
        q = (_roundf(g * _inv(d)[..., None]) + 128).to(torch.uint8)
    else:  # int4 / int2: llama.cpp's Q4_0 rule with ``bits`` bits
        half = 2 ** (bits - 1)
        m = torch.gather(g, -1, g.abs().argmax(-1, keepdim=True)).squeeze(-1)
        d = m / -half
        x = g * _inv(d)[..., None] + (half + 0.5)
        q = torch.trunc(x).clamp(0, 2 * half - 1).to(torch.uint8)
    codes = q.reshape(rows, -1)[:, :cols].contiguous()
    return codes, d.to(torch.float16)


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor, kind: str, group: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The table ``[rows, cols]`` in ``dtype``: ``(q - 2**(bits-1)) · d`` (q1: ``(2q - 1) · d``)."""
    bits = check_kind(kind, group)
    rows, cols = codes.shape
    s = scales.to(dtype).repeat_interleave(group, dim=1)[:, :cols]
    if bits == 1:
        return (codes.to(dtype) * 2 - 1) * s
    return (codes.to(dtype) - 2 ** (bits - 1)) * s


def bits_per_weight(kind: str, group: int, cols: int, scale_bits: int = 16) -> float:
    """Stored bits per weight of a row of ``cols`` weights (packed rows padded to bytes)."""
    bits = check_kind(kind, group)
    return (((cols * bits + 7) // 8) * 8 + scale_bits * num_groups(cols, group)) / cols


def signed_values(codes: torch.Tensor, kind: str) -> torch.Tensor:
    """The integer value of each code (int8): ``q - 2**(bits-1)``, q1: ``±1`` (for export)."""
    bits = KINDS[kind][0]
    if bits == 1:
        return codes.to(torch.int8) * 2 - 1
    return (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
