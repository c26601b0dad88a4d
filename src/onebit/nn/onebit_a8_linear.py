"""OneBit-W1A8: the OneBit layer with integer (int8 by default) activations.

``Y = (Q(X ⊙ g) · sign(W)ᵀ) ⊙ h``: the quantized tensor is ``X ⊙ g`` — the
operand of the ±1 matrix product — so that product can run as an integer GEMM
with the per-token (or static) scale and ``h`` applied to its output.  The
stored tensors are OneBit's (``weight_packed``, ``g``, ``h``) plus
``act_scale`` with static activation scales.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..methods.actquant import ActQuantMixin
from ..methods.quant import cast_ste
from .onebit_linear import LN_EPS, OneBitLinear, OneBitLinearTrain
from .ste import sign_ste


class OneBitLinearA8(ActQuantMixin, OneBitLinear):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, layernorm: bool = False,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 act_bits: int = 8, act_static: bool = False, device=None):
        super().__init__(in_features, out_features, bias, layernorm, scale_dtype, bias_dtype, device)
        self._init_act(act_bits, act_static, device)

    def act_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.compute("g", x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = self.quant_act(self.act_input(x))
        ones = self.derived("g", "ones", lambda g: torch.ones(g.shape, dtype=torch.float32, device=g.device))
        y = torch.ops.onebit.binary_linear(xg, self.weight_packed, ones, self.compute("h"), self.in_features)
        if self.layernorm:
            y = F.layer_norm(y, (self.out_features,), eps=LN_EPS)
        return y + self.compute("bias", y.dtype) if self.bias is not None else y

    def to_train(self, dtype: torch.dtype = torch.float32) -> "OneBitLinearA8Train":
        base = super().to_train(dtype)
        m = OneBitLinearA8Train(self.in_features, self.out_features, self.bias is not None, self.layernorm,
                                dtype, self.weight_packed.device, self.act_bits, self.act_scale is not None)
        m.load_state_dict(base.state_dict(), strict=False)
        m.scale_dtype = self.g.dtype
        self._copy_act(m)
        return m


class OneBitLinearA8Train(ActQuantMixin, OneBitLinearTrain):
    def __init__(self, in_features: int, out_features: int, bias: bool = False, layernorm: bool = False,
                 dtype: torch.dtype = torch.float32, device=None, act_bits: int = 8,
                 act_static: bool = False):
        super().__init__(in_features, out_features, bias, layernorm, dtype, device)
        self._init_act(act_bits, act_static, device)
        #: g and h go through their storage dtype in the forward, as in the packed layer, so
        #: the quantized activations (and the output) equal the packed layer's
        self.scale_dtype = torch.float16

    @classmethod
    @torch.no_grad()
    def from_onebit(cls, base: OneBitLinearTrain, act_bits: int = 8,
                    act_static: bool = False) -> "OneBitLinearA8Train":
        m = cls(base.in_features, base.out_features, base.bias is not None, base.layernorm,
                base.weight.dtype, base.weight.device, act_bits, act_static)
        m.load_state_dict(base.state_dict(), strict=False)
        return m

    def act_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * cast_ste(self.g, self.scale_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.quant_act(self.act_input(x), ste=True), sign_ste(self.weight)) \
            * cast_ste(self.h, self.scale_dtype)
        if self.layernorm:
            y = F.layer_norm(y, (self.out_features,), eps=LN_EPS)
        return y + self.bias if self.bias is not None else y

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> OneBitLinearA8:
        scale_dtype = scale_dtype or self.scale_dtype
        base = super().to_packed(scale_dtype)
        m = OneBitLinearA8(self.in_features, self.out_features, self.bias is not None, self.layernorm,
                           scale_dtype, base.bias.dtype if base.bias is not None else torch.float32,
                           self.act_bits, self.act_scale is not None, self.weight.device)
        m.load_state_dict(base.state_dict(), strict=False)
        self._copy_act(m)
        return m
