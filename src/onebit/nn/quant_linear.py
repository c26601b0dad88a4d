"""n-bit uniform quantized linear (RTN, GPTQ): packed inference form and trainable form.

Stored tensors, all under the module's prefix (so the ledger counts them):

* ``weight_packed`` uint8 ``[out, ceil(in * bits / 8)]``: codes ``q`` packed by
  ``formats.packing.pack(q, bits)`` (LSB-first along in_features);
* ``scale`` fp16 ``[1, 1]`` / ``[out, 1]`` / ``[out, ceil(in / group_size)]``;
* ``zero`` uint8, same shape as ``scale`` — only for asymmetric quantization
  (symmetric codes have the implicit zero ``2**(bits-1)``);
* ``act_scale`` fp32 ``[1]`` — only with static activation quantization;
* ``bias`` if the original linear had one.

``Ŵ = (q - zero) ⊙ scale`` (conventions in ``onebit.methods.quant``); the
forward is ``torch.ops.onebit.quant_linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels  # noqa: F401  (registers torch.ops.onebit)
from ..formats.packing import pack, packed_cols, unpack
from ..methods.actquant import ActQuantMixin
from ..methods.quant import (cast_ste, dequantize_codes, fake_quantize_ste, find_qparams, params_shape,
                             quantize_codes)


class QuantLinear(ActQuantMixin, nn.Module):
    """Packed n-bit linear for inference (buffers only)."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0,
                 sym: bool = True, bias: bool = False, act_bits: int = 0, act_static: bool = False,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.sym = bits, group_size, sym
        shape = params_shape(out_features, in_features, group_size)
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, bits), dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(shape, dtype=scale_dtype, device=device))
        if sym:
            self.zero = None
        else:
            self.register_buffer("zero", torch.zeros(shape, dtype=torch.uint8, device=device))
        self._init_act(act_bits, act_static, device)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_act(x)
        y = torch.ops.onebit.quant_linear(x, self.weight_packed, self.scale, self.zero, self.bits,
                                          self.group_size, self.in_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def codes(self) -> torch.Tensor:
        return unpack(self.weight_packed, self.bits, self.in_features)

    def zero_float(self) -> torch.Tensor:
        if self.zero is not None:
            return self.zero.float()
        return torch.full(self.scale.shape, float(2 ** (self.bits - 1)), device=self.scale.device)

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_codes(self.codes(), self.scale.float(), self.zero_float(), self.group_size, dtype)

    @torch.no_grad()
    def to_train(self, dtype: torch.dtype = torch.float32) -> "QuantLinearTrain":
        return QuantLinearTrain.from_params(
            self.dense_weight(dtype), self.scale.float(), self.zero_float(), self.bits, self.group_size,
            self.sym, self.bias, act_bits=self.act_bits, act_scale=self.act_scale,
            scale_dtype=self.scale.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, sym={self.sym}, act_bits={self.act_bits}, "
                f"bias={self.bias is not None}")


class QuantLinearTrain(ActQuantMixin, nn.Module):
    """Trainable fake-quant form: latent ``weight`` and ``scale`` parameters, round with STE.

    Forward = the packed module's forward for the same values: the scale goes through its
    storage dtype, codes are ``clamp(round(W / s) + z)``.  ``zero`` is fixed (a buffer).
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0,
                 sym: bool = True, bias: bool = False, act_bits: int = 0, act_static: bool = False,
                 scale_dtype: torch.dtype = torch.float16, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.sym, self.scale_dtype = bits, group_size, sym, scale_dtype
        shape = params_shape(out_features, in_features, group_size)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.scale = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device))
        self.register_buffer("zero", torch.full(shape, float(2 ** (bits - 1)), device=device))
        self._init_act(act_bits, act_static, device)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_params(cls, weight, scale, zero, bits, group_size, sym, bias=None, act_bits=0,
                    act_scale=None, scale_dtype=torch.float16) -> "QuantLinearTrain":
        out, cols = weight.shape
        m = cls(cols, out, bits, group_size, sym, bias is not None, act_bits, act_scale is not None,
                scale_dtype, dtype=weight.dtype, device=weight.device)
        m.weight.copy_(weight)
        m.scale.copy_(scale)
        m.zero.copy_(zero)
        if act_scale is not None:
            m.act_scale.copy_(act_scale)
        if bias is not None:
            m.bias.copy_(bias)
        return m

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int = 0, sym: bool = True,
                    clip: str = "minmax", act_bits: int = 0, act_static: bool = False,
                    scale_dtype: torch.dtype = torch.float16) -> "QuantLinearTrain":
        """Round-to-nearest initialisation from an ``nn.Linear``."""
        w = linear.weight.detach()
        scale, zero = find_qparams(w, bits, sym, group_size, clip, scale_dtype)
        act_scale = torch.ones(1, device=w.device) if act_static and act_bits else None
        return cls.from_params(w, scale, zero, bits, group_size, sym, linear.bias, act_bits, act_scale,
                               scale_dtype)

    def effective_scale(self) -> torch.Tensor:
        return cast_ste(self.scale, self.scale_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_act(x, ste=True)
        w = fake_quantize_ste(self.weight.float(), self.effective_scale(), self.zero, self.bits,
                              self.group_size)
        y = F.linear(x, w.to(x.dtype))
        return y + self.bias if self.bias is not None else y

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> QuantLinear:
        """The packed module; ``scale_dtype``: its stored scales' dtype (None: this layer's own)."""
        scale_dtype = scale_dtype or self.scale_dtype
        b = self.bias
        m = QuantLinear(self.in_features, self.out_features, self.bits, self.group_size, self.sym,
                        b is not None, self.act_bits, self.act_scale is not None, scale_dtype,
                        bias_dtype=b.dtype if b is not None else torch.float32, device=self.weight.device)
        s = self.effective_scale().detach()
        m.weight_packed.copy_(pack(quantize_codes(self.weight, s, self.zero, self.bits, self.group_size),
                                   self.bits))
        m.scale.copy_(s.to(scale_dtype))
        if m.zero is not None:
            m.zero.copy_(self.zero.to(torch.uint8))
        self._copy_act(m)
        if b is not None:
            m.bias.copy_(b)
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, sym={self.sym}, act_bits={self.act_bits}")
