"""BitNet layers: W1 (``sign(W - mean W) · mean|W|``) and b1.58 (ternary ``{-1,0,1} · mean|W|``),
each with absmax int8 activations per token by default.

Packed forms (buffers, all under the module prefix):

* :class:`BinaryLinear`: ``weight_packed`` uint8 ``[out, ceil(in/8)]`` (sign bits,
  ``formats.packing.pack_signs``), ``scale`` fp32 ``[1]``; forward via
  ``torch.ops.onebit.binary_linear`` with ``g = 1`` and ``h = scale``.
* :class:`TernaryLinear`: ``weight_packed`` uint8 ``[out, ceil(in/4)]`` (codes
  ``q + 1`` in 2 bits), ``scale`` fp32 ``[1]``; forward via
  ``torch.ops.onebit.ternary_linear``.

:class:`BitNetLinearTrain` is the trainable form of both (latent weight,
quantized every forward with a straight-through estimator, as BitNet trains).
BitNet's extra LayerNorm before each BitLinear (SubLN) changes the
architecture and is not applied here: these are post-training quantizers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels  # noqa: F401
from ..formats.packing import pack, pack_signs, packed_cols, unpack, unpack_signs
from ..methods.actquant import ActQuantMixin
from ..methods.quant import binarize, ternarize
from .onebit_linear import ComputeCopies


class _PackedBitNet(ComputeCopies, ActQuantMixin, nn.Module):
    bits = 1

    def __init__(self, in_features: int, out_features: int, bias: bool = False, act_bits: int = 8,
                 act_static: bool = False, bias_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, self.bits), dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(1, dtype=torch.float32, device=device))
        self._init_act(act_bits, act_static, device)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def _finish(self, y):
        return y + self.compute("bias", y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"act_bits={self.act_bits}, bias={self.bias is not None}")


class BinaryLinear(_PackedBitNet):
    """Packed BitNet W1 layer."""

    bits = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_act(x)
        # g = 1, h = the scale per row: float32 compute copies (cached until the scale changes)
        ones = self.derived("scale", "ones", lambda s: torch.ones(self.in_features, dtype=torch.float32,
                                                                  device=s.device))
        h = self.derived("scale", "h", lambda s: s.float().expand(self.out_features).contiguous())
        y = torch.ops.onebit.binary_linear(x, self.weight_packed, ones, h, self.in_features)
        return self._finish(y)

    def dense_weight(self, dtype=torch.float32) -> torch.Tensor:
        return unpack_signs(self.weight_packed, self.in_features, dtype) * self.scale.to(dtype)


class TernaryLinear(_PackedBitNet):
    """Packed BitNet b1.58 layer (ternary weights, 2-bit codes)."""

    bits = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_act(x)
        y = torch.ops.onebit.ternary_linear(x, self.weight_packed, self.scale, self.in_features)
        return self._finish(y)

    def dense_weight(self, dtype=torch.float32) -> torch.Tensor:
        q = unpack(self.weight_packed, 2, self.in_features).to(dtype) - 1
        return q * self.scale.to(dtype)


class BitNetLinearTrain(ActQuantMixin, nn.Module):
    """Trainable BitNet layer: latent weight, binarised/ternarised every forward (STE)."""

    def __init__(self, in_features: int, out_features: int, ternary: bool = False, bias: bool = False,
                 act_bits: int = 8, act_static: bool = False, dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.ternary = in_features, out_features, ternary
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self._init_act(act_bits, act_static, device)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, ternary: bool, act_bits: int = 8,
                    act_static: bool = False) -> "BitNetLinearTrain":
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, ternary, linear.bias is not None, act_bits,
                act_static, w.dtype, w.device)
        m.weight.copy_(w)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def quantized_weight(self) -> torch.Tensor:
        w = self.weight.float()
        q, s = ternarize(w) if self.ternary else binarize(w)
        return w + (q * s - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_act(x, ste=True)
        y = F.linear(x, self.quantized_weight().to(x.dtype))
        return y + self.bias if self.bias is not None else y

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> _PackedBitNet:
        """The packed module (the same signature as every trainable form's; BitNet's one scale per
        tensor is always stored in float32, so ``scale_dtype`` changes nothing)."""
        b = self.bias
        cls = TernaryLinear if self.ternary else BinaryLinear
        m = cls(self.in_features, self.out_features, b is not None, self.act_bits,
                self.act_scale is not None, b.dtype if b is not None else torch.float32,
                self.weight.device)
        if self.ternary:
            q, s = ternarize(self.weight)
            m.weight_packed.copy_(pack((q + 1).to(torch.uint8), 2))
        else:
            q, s = binarize(self.weight)
            m.weight_packed.copy_(pack_signs(q))
        m.scale.copy_(s)
        self._copy_act(m)
        if b is not None:
            m.bias.copy_(b)
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"ternary={self.ternary}, act_bits={self.act_bits}")
