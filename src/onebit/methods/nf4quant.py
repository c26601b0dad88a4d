"""NF4 (Dettmers et al. 2023, QLoRA's 4-bit NormalFloat) with double quantization: pure functions.

Levels (:func:`nf4_levels`): the 16 values of QLoRA's ``create_normal_map(offset=0.9677083)`` —
8 positive quantiles ``Φ⁻¹(linspace(offset, 0.5, 9)[:-1])``, 7 negative ones
``-Φ⁻¹(linspace(offset, 0.5, 8)[:-1])`` and an exact 0, divided by the largest, so the table
runs from -1 to 1 (asymmetric: 7 negative levels, 8 positive).

Blocks: the weight is flattened (row-major) and cut into blocks of ``block_size`` (64) values;
each block has its ``absmax``; a value is coded by the level nearest to ``w / absmax``
(``Ŵ = level[code] · absmax``).

Double quantization (``double_quant=True``): the fp32 absmaxes lose their mean ``offset``
(fp32, one per tensor) and are quantized to int8, symmetric, in blocks of ``dq_block_size``
(256) absmaxes with an fp32 scale each: ``absmax ≈ q · s₂ + offset``.  The codes are then computed
against these *dequantized* absmaxes (so the stored tensors give the least error they can).
Cost: ``4 + 8/64 + 32/(64·256) = 4.127`` bits per weight (+ 32 bits per tensor), against
``4 + 32/64 = 4.5`` with fp32 absmaxes.
"""
from __future__ import annotations

import math

import torch

#: QLoRA's offset: the quantile of the outermost levels, ``(1 - 1/(2·15) + 1 - 1/(2·16)) / 2``
NF4_OFFSET = 0.9677083
#: int8 range of the double-quantized absmaxes (symmetric)
DQ_QMAX = 127


def nf4_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values, ascending, float32 (index = 4-bit code)."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (v / v.max()).float()


def num_blocks(numel: int, block_size: int) -> int:
    return math.ceil(numel / block_size)


def _blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flattened ``w`` as ``[n_blocks, block_size]``, the last block padded with zeros."""
    flat = w.reshape(-1).float()
    pad = num_blocks(flat.numel(), block_size) * block_size - flat.numel()
    return torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block_size)


def double_quantize(absmax: torch.Tensor, dq_block_size: int = 256):
    """``(q int8 [n], scale fp32 [ceil(n / dq_block_size)], offset fp32 [1])`` of fp32 ``absmax``."""
    a = absmax.float()
    offset = a.mean().reshape(1)
    c = _blocks(a - offset, dq_block_size)
    scale = (c.abs().amax(1) / DQ_QMAX).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.round(c / scale[:, None]), -DQ_QMAX, DQ_QMAX)
    return q.reshape(-1)[:a.numel()].to(torch.int8), scale, offset


def double_dequantize(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                      dq_block_size: int = 256) -> torch.Tensor:
    """fp32 absmaxes ``q · s₂ + offset`` from :func:`double_quantize`'s tensors."""
    s = scale.float().repeat_interleave(dq_block_size)[:q.numel()]
    return q.float() * s + offset.float()


def nf4_codes(w: torch.Tensor, absmax: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """uint8 codes ``[numel]`` of flattened ``w``: the level nearest to ``w / absmax`` per block
    (``level · absmax`` nearest to ``w``; code 7 (= 0.0) where the absmax is 0)."""
    levels = nf4_levels().to(w.device)
    mids = (levels[1:] + levels[:-1]) / 2
    b = _blocks(w, block_size)
    a = absmax.float().to(w.device)[:, None]
    r = torch.where(a != 0, b / torch.where(a != 0, a, 1.0), 0.0)
    codes = torch.bucketize(r, mids)
    return codes.reshape(-1)[:w.numel()].to(torch.uint8)


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, shape, block_size: int = 64,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``level[code] · absmax`` reshaped to ``shape``."""
    levels = nf4_levels().to(codes.device)
    n = codes.numel()
    a = absmax.float().repeat_interleave(block_size)[:n]
    return (levels[codes.reshape(-1).long()] * a).reshape(shape).to(dtype)


def nf4_quantize(w: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                 dq_block_size: int = 256) -> dict[str, torch.Tensor]:
    """Stored tensors of ``w``: ``codes`` (uint8, one per value) and either ``absmax`` (fp32) or
    ``absmax_q`` (int8) / ``absmax_scale`` (fp32) / ``absmax_offset`` (fp32 [1])."""
    absmax = _blocks(w, block_size).abs().amax(1)
    if double_quant:
        q, s, off = double_quantize(absmax, dq_block_size)
        a_hat = double_dequantize(q, s, off, dq_block_size)
        return {"codes": nf4_codes(w, a_hat, block_size), "absmax_q": q, "absmax_scale": s,
                "absmax_offset": off}
    return {"codes": nf4_codes(w, absmax, block_size), "absmax": absmax}


def nf4_fake_quantize(w: torch.Tensor, block_size: int = 64, double_quant: bool = True,
                      dq_block_size: int = 256) -> torch.Tensor:
    """``Ŵ``: NF4 quantize then dequantize, in ``w``'s dtype."""
    t = nf4_quantize(w, block_size, double_quant, dq_block_size)
    a = (double_dequantize(t["absmax_q"], t["absmax_scale"], t["absmax_offset"], dq_block_size)
         if double_quant else t["absmax"])
    return nf4_dequantize(t["codes"], a, w.shape, block_size, w.dtype)


def nf4_bits(numel: int, block_size: int = 64, double_quant: bool = True, dq_block_size: int = 256) -> int:
    """Bits of the stored tensors of one ``numel``-value weight (codes at 4 bits, no row padding)."""
    nb = num_blocks(numel, block_size)
    if double_quant:
        return 4 * numel + 8 * nb + 32 * num_blocks(nb, dq_block_size) + 32
    return 4 * numel + 32 * nb
