"""NF4 (QLoRA's 4-bit NormalFloat) with double quantization of the block absmaxes: a non-uniform
4-bit baseline beside uniform INT4 (RTN/GPTQ/AWQ).  Data-free, layer by layer.

Math: :mod:`onebit.methods.nf4quant`; packed module: :class:`onebit.nn.nf4_linear.NF4Linear`.
Bits: 4 per weight + 8 per block of 64 + 32 per 256 blocks (+ 32 per tensor) = 4.127 with double
quantization, 4.5 without (fp32 absmaxes), as the ledger counts them from the stored tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.nf4_linear import NF4Linear
from ..registry import MethodHandler, register_method
from .common import check_finite_weight
from ..method_configs import NF4Config  # noqa: F401  (torch-free; re-exported)


@register_method(NF4Config)
class NF4Handler(MethodHandler):
    config: NF4Config

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        check_finite_weight(name, linear)
        c = self.config
        return NF4Linear.from_linear(linear, c.block_size, c.double_quant, c.dq_block_size)

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        c = self.config
        return NF4Linear(in_features, out_features, bias, c.block_size, c.double_quant, c.dq_block_size,
                         bias_dtype=dtype, device="meta")
