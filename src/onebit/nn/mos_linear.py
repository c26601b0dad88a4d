"""Mixture of scales (BinaryMoS): OneBit's layer with token-adaptive ``g`` and ``h``.

Per token, ``p = softmax(x W_r)`` over ``k`` experts, ``g = p G_e``, ``h = p H_e``, then
``y = h ⊙ (sign(W) (g ⊙ x))`` (math: :mod:`onebit.methods.multiscale`).  Tensors: ``g``
``[k, in]`` and ``h`` ``[k, out]`` (the experts), ``router`` ``[in, k]``; all three are stored
(``scale_dtype``) and counted by the ledger as the layer's own tensors.

* :class:`MoSLinearTrain`: latent fp ``weight`` (sign via straight-through estimator),
  trainable experts and router; initialised from SVID (every expert = ``g``/``h``, plus
  zero-mean noise, router zero).  ``g``, ``h`` and ``router`` are kept flat (1-D; ``g_experts``,
  ``h_experts``, ``router_matrix`` are the ``[k, in]``, ``[k, out]``, ``[in, k]`` views) so the
  trainers treat them as scale vectors (``--lr-vectors``, no weight decay, no ``--latent-clip``:
  a clip bound computed from the zero router would pin it at zero), not as latent sign matrices;
* :class:`MoSLinear`: packed signs (``weight_packed``, onebit's bit order); the product is the
  ``onebit::binary_linear`` op on ``g ⊙ x`` with unit scales.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels  # noqa: F401  (registers torch.ops.onebit)
from ..formats.packing import pack_signs, packed_cols, unpack_signs
from ..methods.multiscale import mos_init_experts, mos_scales
from ..methods.svid import svid
from .rank_linear import packed_sign_product
from .ste import sign_ste


class MoSLinearTrain(nn.Module):
    """Trainable mixture-of-scales layer with a latent fp weight (sign via STE)."""

    def __init__(self, in_features: int, out_features: int, experts: int = 4, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features, self.experts = in_features, out_features, experts
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.g = nn.Parameter(torch.ones(experts * in_features, dtype=dtype, device=device))
        self.h = nn.Parameter(torch.ones(experts * out_features, dtype=dtype, device=device))
        self.router = nn.Parameter(torch.zeros(in_features * experts, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @property
    def g_experts(self) -> torch.Tensor:
        return self.g.view(self.experts, self.in_features)

    @property
    def h_experts(self) -> torch.Tensor:
        return self.h.view(self.experts, self.out_features)

    @property
    def router_matrix(self) -> torch.Tensor:
        return self.router.view(self.in_features, self.experts)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, experts: int = 4, init: str = "svd", noise: float = 0.0,
                    seed: int = 0) -> "MoSLinearTrain":
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, experts, linear.bias is not None,
                dtype=w.dtype, device=w.device)
        a, b = svid(w, init)
        he, ge = mos_init_experts(a, b, experts, noise, seed)
        m.weight.copy_(w)
        m.h_experts.copy_(he.to(w.dtype))
        m.g_experts.copy_(ge.to(w.dtype))
        m.router.zero_()
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, h = mos_scales(x, self.router_matrix, self.g_experts, self.h_experts)
        y = F.linear(x * g, sign_ste(self.weight).to(x.dtype)) * h
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> "MoSLinear":
        """The packed module; ``scale_dtype``: its stored scales' dtype (None: float16)."""
        scale_dtype = scale_dtype or torch.float16
        m = MoSLinear(self.in_features, self.out_features, self.experts, self.bias is not None,
                      scale_dtype, self.bias.dtype if self.bias is not None else torch.float32,
                      device=self.weight.device)
        m.weight_packed.copy_(pack_signs(self.weight))
        m.g.copy_(self.g_experts.to(scale_dtype))
        m.h.copy_(self.h_experts.to(scale_dtype))
        m.router.copy_(self.router_matrix.to(scale_dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"experts={self.experts}, bias={self.bias is not None}")


class MoSLinear(nn.Module):
    """Packed mixture-of-scales layer: ``weight_packed``, experts ``g``/``h``, ``router``."""

    def __init__(self, in_features: int, out_features: int, experts: int = 4, bias: bool = False,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.experts = in_features, out_features, experts
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, 1), dtype=torch.uint8, device=device))
        self.register_buffer("g", torch.ones(experts, in_features, dtype=scale_dtype, device=device))
        self.register_buffer("h", torch.ones(experts, out_features, dtype=scale_dtype, device=device))
        self.register_buffer("router", torch.zeros(in_features, experts, dtype=scale_dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, h = mos_scales(x, self.router, self.g, self.h)
        y = packed_sign_product(x * g, self.weight_packed, self.in_features) * h
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    @torch.no_grad()
    def to_train(self, dtype: torch.dtype = torch.float32) -> MoSLinearTrain:
        """The trainable form with the same forward (latent weight = ``sign ⊙ |h̄ ḡᵀ|``, the
        uniform mixture of the experts)."""
        m = MoSLinearTrain(self.in_features, self.out_features, self.experts, self.bias is not None,
                           dtype=dtype, device=self.weight_packed.device)
        s = unpack_signs(self.weight_packed, self.in_features, dtype)
        mag = torch.outer(self.h.to(dtype).mean(0).abs(), self.g.to(dtype).mean(0).abs()).clamp_min(1e-8)
        m.weight.copy_(s * mag)
        m.g_experts.copy_(self.g.to(dtype))
        m.h_experts.copy_(self.h.to(dtype))
        m.router_matrix.copy_(self.router.to(dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias.to(dtype))
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"experts={self.experts}, bias={self.bias is not None}, scale_dtype={self.g.dtype}")
