"""Pure-torch reference implementations of the packed ops.

They unpack the bits a block of output rows at a time (bounded memory), then
call an ordinary matmul.  Always available, on every device; the fast
backends are checked against these.
"""
from __future__ import annotations

import torch

from ..formats.packing import unpack, unpack_signs

#: rows of the weight unpacked at once (bounds the temporary ±1 matrix)
ROW_BLOCK = 2048


def binary_linear_ref(x: torch.Tensor, packed: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
                      in_features: int) -> torch.Tensor:
    """``y = ((x ⊙ g) · sign(W)ᵀ) ⊙ h`` with ``sign(W)`` given as packed bits.

    x: ``[..., in_features]``; packed: uint8 ``[out, ceil(in/8)]``;
    g: ``[in_features]``; h: ``[out]``.  Computes in ``x.dtype``.
    """
    dtype = x.dtype
    xs = x * g.to(dtype)
    out = packed.shape[0]
    if out <= ROW_BLOCK:
        y = torch.nn.functional.linear(xs, unpack_signs(packed, in_features, dtype))
    else:
        y = torch.cat([
            torch.nn.functional.linear(xs, unpack_signs(packed[r:r + ROW_BLOCK], in_features, dtype))
            for r in range(0, out, ROW_BLOCK)], dim=-1)
    return y * h.to(dtype)


def ternary_linear_ref(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                       in_features: int) -> torch.Tensor:
    """``y = (x · Qᵀ) ⊙ scale`` with ternary ``Q ∈ {-1, 0, +1}`` packed 2 bits per weight.

    Codes are ``q + 1`` (0 -> -1, 1 -> 0, 2 -> +1), packed by
    ``formats.packing.pack(codes, 2)`` along in_features.  ``scale`` is
    per-tensor (``[1]``) or per-output-row (``[out]``).
    """
    dtype = x.dtype
    out = packed.shape[0]
    parts = []
    for r in range(0, out, ROW_BLOCK):
        q = unpack(packed[r:r + ROW_BLOCK], 2, in_features).to(dtype) - 1
        parts.append(torch.nn.functional.linear(x, q))
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return y * scale.to(dtype)


def quant_linear_ref(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                     zero: torch.Tensor | None, bits: int, group_size: int,
                     in_features: int) -> torch.Tensor:
    """``y = x · Ŵᵀ`` with ``Ŵ = (q - zero) ⊙ scale`` from n-bit codes ``q`` (RTN / GPTQ).

    packed: uint8 ``[out, ceil(in * bits / 8)]`` (``formats.packing.pack(q, bits)``);
    scale: ``[1, 1]`` (per tensor), ``[out, 1]`` (per channel) or ``[out, ceil(in / group_size)]``;
    zero: same shape as scale (uint8 or float), or None for symmetric codes (zero ``2**(bits-1)``).
    Layout and rounding conventions: ``onebit.methods.quant``.
    """
    dtype = x.dtype
    out = packed.shape[0]
    parts = []
    for r in range(0, out, ROW_BLOCK):
        q = unpack(packed[r:r + ROW_BLOCK], bits, in_features).to(dtype)
        s = scale[r:r + ROW_BLOCK] if scale.shape[0] > 1 else scale
        z = (zero[r:r + ROW_BLOCK] if zero.shape[0] > 1 else zero).to(dtype) if zero is not None \
            else torch.full_like(s, 2 ** (bits - 1), dtype=dtype)
        if group_size > 0:
            s = s.repeat_interleave(group_size, dim=1)[:, :in_features]
            z = z.repeat_interleave(group_size, dim=1)[:, :in_features]
        parts.append(torch.nn.functional.linear(x, (q - z) * s.to(dtype)))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def block_sign_linear_ref(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
                          in_features: int) -> torch.Tensor:
    """``y = x · Ŵᵀ`` with ``Ŵ = sign(W) ⊙ scales[row, col // group_size]`` (llama.cpp Q1_0 when
    ``group_size`` is 128 and the scales fp16).

    packed: uint8 ``[out, ceil(in/8)]`` from ``formats.packing.pack_signs`` (bit 1 -> +1, 0 -> -1);
    scales: ``[out, ceil(in / group_size)]`` (the last block of a row may be shorter).  Each weight
    is ``±scales.to(x.dtype)`` (exact); the rows are expanded ``ROW_BLOCK`` at a time.
    """
    dtype = x.dtype
    out = packed.shape[0]
    nb = scales.shape[1]
    parts = []
    for r in range(0, out, ROW_BLOCK):
        w = unpack_signs(packed[r:r + ROW_BLOCK], in_features, dtype)
        s = scales[r:r + ROW_BLOCK].to(dtype)
        s = s.repeat_interleave(group_size, dim=1)[:, :in_features] if nb > 1 else s
        parts.append(torch.nn.functional.linear(x, w * s))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def decode_attention_ref(q: torch.Tensor, kt: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of one query position over a KV cache with its keys stored transposed.

    q: ``[nh, D]``; kt: ``[nkv, D, L]`` (keys, transposed); v: ``[nkv, L, D]``; head ``h`` uses KV
    head ``h // (nh / nkv)`` (grouped-query attention, as SDPA's ``enable_gqa``).  Returns
    ``softmax(q·k·scale)·v`` per head, ``[nh, D]``, with the softmax in float32.
    """
    nkv = kt.shape[0]
    qg = q.reshape(nkv, q.shape[0] // nkv, q.shape[1])
    s = torch.bmm(qg, kt).mul_(scale)
    p = s.softmax(-1) if s.dtype == torch.float32 else s.float().softmax(-1).to(s.dtype)
    return torch.bmm(p, v).reshape(q.shape)

