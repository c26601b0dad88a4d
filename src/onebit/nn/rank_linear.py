"""Rank-k scales: ``W ≈ sign(W) ⊙ (H Gᵀ)``, ``y = Σ_r h_r ⊙ (sign(W) (g_r ⊙ x))``.

OneBit's layer is the case ``k = 1``.  Tensors (rows = components): ``g`` ``[k, in]``, ``h``
``[k, out]``; the out × in matrix ``H Gᵀ`` is never built (one product with the sign matrix on
``x`` expanded to ``k`` copies, :func:`onebit.methods.multiscale.rank_scaled_product`).

* :class:`RankScaleLinearTrain`: latent fp ``weight`` (sign via straight-through estimator),
  trainable ``g``/``h``, rank-k SVID initialisation (:func:`onebit.methods.multiscale.svid_rank`).
  ``g``/``h`` are kept flat (1-D, ``[k·in]``/``[k·out]``; ``g_rows``/``h_rows`` are the ``[k, ·]``
  views) so the trainers treat them as scale vectors (``--lr-vectors``, no weight decay, no
  ``--latent-clip``), not as latent sign matrices;
* :class:`RankScaleLinear`: packed signs (``weight_packed``, onebit's bit order) and ``g``/``h``
  in ``scale_dtype``; the product is the ``onebit::binary_linear`` op with unit scales.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels  # noqa: F401  (registers torch.ops.onebit)
from ..formats.packing import pack_signs, packed_cols, unpack_signs
from ..methods.multiscale import rank_reconstruct, rank_scaled_product, svid_rank
from .ste import sign_ste


def packed_sign_product(xs: torch.Tensor, packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """``xs [..., in] · sign(W)ᵀ`` through ``onebit::binary_linear`` (unit g and h)."""
    x2 = xs.reshape(-1, in_features)
    ones_in = torch.ones(in_features, dtype=xs.dtype, device=xs.device)
    ones_out = torch.ones(packed.shape[0], dtype=xs.dtype, device=xs.device)
    y = torch.ops.onebit.binary_linear(x2, packed, ones_in, ones_out, in_features)
    return y.reshape(*xs.shape[:-1], packed.shape[0])


class RankScaleLinearTrain(nn.Module):
    """Trainable rank-k layer with a latent fp weight (sign via STE)."""

    def __init__(self, in_features: int, out_features: int, rank: int = 2, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.g = nn.Parameter(torch.ones(rank * in_features, dtype=dtype, device=device))
        self.h = nn.Parameter(torch.ones(rank * out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @property
    def g_rows(self) -> torch.Tensor:
        """``g`` as ``[k, in]`` (row r = ``g_r``)."""
        return self.g.view(self.rank, self.in_features)

    @property
    def h_rows(self) -> torch.Tensor:
        """``h`` as ``[k, out]`` (row r = ``h_r``)."""
        return self.h.view(self.rank, self.out_features)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, rank: int = 2, init: str = "svd") -> "RankScaleLinearTrain":
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                dtype=w.dtype, device=w.device)
        hh, gg = svid_rank(w, rank, init)
        m.weight.copy_(w)
        m.h_rows.copy_(hh.T.to(w.dtype))
        m.g_rows.copy_(gg.T.to(w.dtype))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = sign_ste(self.weight).to(x.dtype)
        y = rank_scaled_product(x, self.g_rows, self.h_rows, lambda xs: F.linear(xs, s))
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> "RankScaleLinear":
        """The packed module; ``scale_dtype``: its stored scales' dtype (None: float16)."""
        scale_dtype = scale_dtype or torch.float16
        m = RankScaleLinear(self.in_features, self.out_features, self.rank, self.bias is not None,
                            scale_dtype, self.bias.dtype if self.bias is not None else torch.float32,
                            device=self.weight.device)
        m.weight_packed.copy_(pack_signs(self.weight))
        m.g.copy_(self.g_rows.to(scale_dtype))
        m.h.copy_(self.h_rows.to(scale_dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


class RankScaleLinear(nn.Module):
    """Packed rank-k layer: ``weight_packed`` uint8 ``[out, ceil(in/8)]``, ``g`` ``[k, in]``, ``h`` ``[k, out]``."""

    def __init__(self, in_features: int, out_features: int, rank: int = 2, bias: bool = False,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, 1), dtype=torch.uint8, device=device))
        self.register_buffer("g", torch.ones(rank, in_features, dtype=scale_dtype, device=device))
        self.register_buffer("h", torch.ones(rank, out_features, dtype=scale_dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rank_scaled_product(x, self.g, self.h,
                                lambda xs: packed_sign_product(xs, self.weight_packed, self.in_features))
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective dense weight ``sign(W) ⊙ (H Gᵀ)`` (for tests and export checks)."""
        s = unpack_signs(self.weight_packed, self.in_features, dtype)
        return rank_reconstruct(s, self.h.to(dtype), self.g.to(dtype))

    @torch.no_grad()
    def to_train(self, dtype: torch.dtype = torch.float32) -> RankScaleLinearTrain:
        """The trainable form with the same forward (latent weight = ``sign ⊙ |H Gᵀ|``)."""
        m = RankScaleLinearTrain(self.in_features, self.out_features, self.rank, self.bias is not None,
                                 dtype=dtype, device=self.weight_packed.device)
        s = unpack_signs(self.weight_packed, self.in_features, dtype)
        m.weight.copy_(s * (self.h.to(dtype).T @ self.g.to(dtype)).abs().clamp_min(1e-8))
        m.g_rows.copy_(self.g.to(dtype))
        m.h_rows.copy_(self.h.to(dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias.to(dtype))
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}, scale_dtype={self.g.dtype}")
