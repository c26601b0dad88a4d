"""Shared quantizer math: pure functions on tensors, no modules, no I/O.

Uniform (RTN/GPTQ) weight quantization, GPTQ's convention
---------------------------------------------------------
``bits`` in 2..8, ``maxq = 2**bits - 1``, unsigned integer codes
``q ∈ [0, maxq]``, one ``scale`` and ``zero`` per group::

    q     = clamp(round(w / scale) + zero, 0, maxq)
    w_hat = (q - zero) * scale

* asymmetric: ``scale = (xmax - xmin) / maxq``, ``zero = round(-xmin / scale)``
  with ``xmin = min(w, 0)``, ``xmax = max(w, 0)`` over the group;
* symmetric: ``xmax = max|w|``, ``xmin = -xmax`` and ``zero = 2**(bits-1)``
  (implicit, not stored): the grid is ``{-2**(bits-1) .. 2**(bits-1)-1} * scale``.

Granularity, by ``group_size``: ``-1`` one scale for the whole tensor; ``0``
one per output row (per channel); ``g > 0`` one per ``g`` consecutive input
columns of a row.  ``scale``/``zero`` have shape ``[1, 1]``, ``[out, 1]`` or
``[out, ceil(in / g)]``; when ``in`` is not a multiple of ``g`` the last group
is shorter.  Scales are rounded to their storage dtype (fp16) *before* codes
are computed, so stored codes and scales reproduce ``w_hat`` exactly.

Clipping: ``clip="minmax"`` uses the group's range; ``clip="mse"`` searches a
shrink ratio ``p ∈ {1, 0.99, ..., 0.21}`` of the range per group and keeps the
one with the least squared error (GPTQ's ``Quantizer(mse=True)``, norm 2).

1-bit methods (BitNet)
----------------------
* :func:`binarize`: ``sign(W - mean(W))`` with scale ``mean|W|`` (BitNet W1).
* :func:`ternarize`: ``RoundClip(W / mean|W|, -1, 1)`` with scale ``mean|W|``
  (BitNet b1.58).
"""
from __future__ import annotations

import torch

from ..config import CLIP_MODES  # noqa: F401  (re-exported)

RTN_BITS = (2, 3, 4, 5, 6, 7, 8)
#: smallest scale kept (fp16's smallest normal number), so no scale rounds to 0
MIN_SCALE = 6.2e-5


def check_group_size(group_size: int, in_features: int | None = None) -> None:
    if group_size < -1:
        raise ValueError(f"group size must be -1 (per tensor), 0 (per channel) or > 0, got {group_size}")
    if in_features is not None and group_size > in_features:
        raise ValueError(f"group size {group_size} is larger than the layer's in_features {in_features}")


def num_groups(in_features: int, group_size: int) -> int:
    return (in_features + group_size - 1) // group_size if group_size > 0 else 1


def params_shape(out_features: int, in_features: int, group_size: int) -> tuple[int, int]:
    """Shape of ``scale``/``zero`` for a ``[out, in]`` weight."""
    if group_size == -1:
        return (1, 1)
    return (out_features, num_groups(in_features, group_size))


def _grouped(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` as ``[R, G, n]`` groups (last group padded by repeating its last column) + a mask."""
    out, cols = w.shape
    if group_size == -1:
        return w.reshape(1, 1, -1), torch.ones(1, 1, out * cols, dtype=torch.bool, device=w.device)
    if group_size == 0:
        return w.unsqueeze(1), torch.ones(1, 1, cols, dtype=torch.bool, device=w.device)
    g = num_groups(cols, group_size)
    pad = g * group_size - cols
    if pad:
        w = torch.cat([w, w[:, -1:].expand(out, pad)], dim=1)
    mask = torch.arange(g * group_size, device=w.device) < cols
    return w.reshape(out, g, group_size), mask.reshape(1, g, group_size)


def _range_params(xmin, xmax, bits: int, sym: bool, scale_dtype):
    maxq = 2 ** bits - 1
    xmin = xmin.clamp(max=0)
    xmax = xmax.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    both0 = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both0, -1.0, xmin)
    xmax = torch.where(both0, 1.0, xmax)
    scale = ((xmax - xmin) / maxq).clamp_min(MIN_SCALE)
    if scale_dtype is not None:
        scale = scale.to(scale_dtype).float()
    if sym:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


@torch.no_grad()
def find_qparams(w: torch.Tensor, bits: int, sym: bool = True, group_size: int = 0,
                 clip: str = "minmax", scale_dtype: torch.dtype | None = torch.float16,
                 grid: int = 100, maxshrink: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` (float32, shape :func:`params_shape`) for a ``[out, in]`` weight."""
    if clip not in CLIP_MODES:
        raise ValueError(f"unknown clip mode '{clip}'; choose one of {', '.join(CLIP_MODES)}")
    wg, mask = _grouped(w.detach().float(), group_size)
    xmin, xmax = wg.amin(-1), wg.amax(-1)
    scale, zero = _range_params(xmin, xmax, bits, sym, scale_dtype)
    if clip == "mse":
        maxq = 2 ** bits - 1
        best = torch.full_like(scale, float("inf"))
        for i in range(int(maxshrink * grid)):
            p = 1 - i / grid
            s, z = _range_params(p * xmin, p * xmax, bits, sym, scale_dtype)
            q = (torch.clamp(torch.round(wg / s[..., None]) + z[..., None], 0, maxq) - z[..., None]) \
                * s[..., None]
            err = ((q - wg) ** 2 * mask).sum(-1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
    return scale, zero


def expand_params(t: torch.Tensor, out_features: int, in_features: int, group_size: int) -> torch.Tensor:
    """Per-group ``t`` broadcast to one value per weight, ``[out, in]`` (or ``[1, 1]``)."""
    if group_size > 0:
        return t.repeat_interleave(group_size, dim=1)[:, :in_features]
    return t


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   group_size: int) -> torch.Tensor:
    """uint8 codes ``clamp(round(w / scale) + zero, 0, maxq)``."""
    out, cols = w.shape
    s = expand_params(scale, out, cols, group_size)
    z = expand_params(zero, out, cols, group_size)
    return torch.clamp(torch.round(w.float() / s) + z, 0, 2 ** bits - 1).to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(codes - zero) * scale`` in ``dtype``."""
    out, cols = codes.shape
    s = expand_params(scale.to(dtype), out, cols, group_size)
    z = expand_params(zero.to(dtype), out, cols, group_size)
    return (codes.to(dtype) - z) * s


def rtn_quantize(w: torch.Tensor, bits: int, sym: bool = True, group_size: int = 0, clip: str = "minmax",
                 scale_dtype: torch.dtype | None = torch.float16):
    """Round-to-nearest: ``(codes, scale, zero)``."""
    scale, zero = find_qparams(w, bits, sym, group_size, clip, scale_dtype)
    return quantize_codes(w, scale, zero, bits, group_size), scale, zero


def fake_quantize(w: torch.Tensor, bits: int, sym: bool = True, group_size: int = 0,
                  clip: str = "minmax", scale_dtype: torch.dtype | None = torch.float16) -> torch.Tensor:
    """``w_hat``: quantize then dequantize (no gradient; see the train modules for the STE form)."""
    codes, scale, zero = rtn_quantize(w, bits, sym, group_size, clip, scale_dtype)
    return dequantize_codes(codes, scale, zero, group_size, w.dtype)


# ------------------------------------------------------------------- straight-through helpers
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


def cast_ste(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``x`` rounded through ``dtype`` (e.g. fp16 storage) forward, identity gradient."""
    if dtype is None or dtype == x.dtype:
        return x
    return x + (x.to(dtype).to(x.dtype) - x).detach()


def fake_quantize_ste(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                      group_size: int) -> torch.Tensor:
    """LSQ-style fake quantization: gradients reach ``w`` (STE through round; zero outside the
    clamp range) and ``scale``."""
    out, cols = w.shape
    s = expand_params(scale, out, cols, group_size)
    z = expand_params(zero, out, cols, group_size)
    q = torch.clamp(round_ste(w / s) + z, 0, 2 ** bits - 1)
    return (q - z) * s


# ------------------------------------------------------------------- BitNet
def binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet W1: ``(sign(W - mean(W)) as ±1, mean|W|)``; ``sign(0) = +1``."""
    wf = w.float()
    s = torch.where(wf - wf.mean() >= 0, 1.0, -1.0)
    return s, wf.abs().mean().reshape(1)


def ternarize(w: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58: ``(RoundClip(W / mean|W|, -1, 1), mean|W|)``."""
    wf = w.float()
    gamma = wf.abs().mean().clamp_min(eps)
    return torch.clamp(torch.round(wf / gamma), -1, 1), gamma.reshape(1)
