"""NF4 packed linear (QLoRA's 4-bit NormalFloat, double-quantized absmaxes); math in
:mod:`onebit.methods.nf4quant`.

Stored tensors, all under the module's prefix (so the ledger counts them):

* ``weight_packed`` uint8 ``[out, ceil(in / 2)]``: the 4-bit codes, ``formats.packing.pack(q, 4)``
  (two per byte, LSB first along in_features);
* with double quantization: ``absmax_q`` int8 ``[n_blocks]``, ``absmax_scale`` fp32
  ``[ceil(n_blocks / dq_block_size)]``, ``absmax_offset`` fp32 ``[1]``; without: ``absmax`` fp32
  ``[n_blocks]`` — ``n_blocks = ceil(out · in / block_size)`` over the row-major flattened weight;
* ``bias`` if the original linear had one.

Forward (reference, pure torch): dequantize ``Ŵ = level[code] · absmax`` and ``F.linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats.packing import pack, packed_cols, unpack
from ..methods.nf4quant import (double_dequantize, nf4_dequantize, nf4_quantize, num_blocks)


class NF4Linear(nn.Module):
    """Packed NF4 linear for inference (buffers only)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, block_size: int = 64,
                 double_quant: bool = True, dq_block_size: int = 256,
                 bias_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.double_quant, self.dq_block_size = block_size, double_quant, dq_block_size
        nb = num_blocks(in_features * out_features, block_size)
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, 4), dtype=torch.uint8, device=device))
        if double_quant:
            self.register_buffer("absmax_q", torch.zeros(nb, dtype=torch.int8, device=device))
            self.register_buffer("absmax_scale", torch.ones(num_blocks(nb, dq_block_size),
                                                            dtype=torch.float32, device=device))
            self.register_buffer("absmax_offset", torch.zeros(1, dtype=torch.float32, device=device))
        else:
            self.register_buffer("absmax", torch.ones(nb, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True,
                    dq_block_size: int = 256) -> "NF4Linear":
        w = linear.weight.detach()
        b = linear.bias
        m = cls(linear.in_features, linear.out_features, b is not None, block_size, double_quant,
                dq_block_size, bias_dtype=b.dtype if b is not None else torch.float32, device=w.device)
        t = nf4_quantize(w, block_size, double_quant, dq_block_size)
        m.weight_packed.copy_(pack(t.pop("codes").reshape(w.shape), 4))
        for k, v in t.items():
            getattr(m, k).copy_(v)
        if b is not None:
            m.bias.copy_(b)
        return m

    def codes(self) -> torch.Tensor:
        return unpack(self.weight_packed, 4, self.in_features)

    def block_absmax(self) -> torch.Tensor:
        if self.double_quant:
            return double_dequantize(self.absmax_q, self.absmax_scale, self.absmax_offset,
                                     self.dq_block_size)
        return self.absmax.float()

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return nf4_dequantize(self.codes(), self.block_absmax(), (self.out_features, self.in_features),
                              self.block_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.dense_weight(x.dtype))
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"block_size={self.block_size}, double_quant={self.double_quant}, "
                f"dq_block_size={self.dq_block_size}, bias={self.bias is not None}")
