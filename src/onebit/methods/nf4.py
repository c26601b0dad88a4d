"""NF4 (QLoRA's 4-bit NormalFloat) with double quantization of the block absmaxes: a non-uniform
4-bit baseline beside uniform INT4 (RTN/GPTQ/AWQ).  Data-free, layer by layer.

Math: :mod:`onebit.methods.nf4quant`; packed module: :class:`onebit.nn.nf4_linear.NF4Linear`.
Bits: 4 per weight + 8 per block of 64 + 32 per 256 blocks (+ 32 per tensor) = 4.127 with double
quantization, 4.5 without (fp32 absmaxes), as the ledger counts them from the stored tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import OneBitError
from ..nn.nf4_linear import NF4Linear
from ..registry import MethodHandler, register_method
from .common import check_finite_weight


@dataclass
class NF4Config(QuantConfig):
    """NF4 settings: block_size (values per absmax, QLoRA's 64), double_quant (int8 absmaxes in
    blocks of dq_block_size = 256 with an fp32 scale, and one fp32 offset; else fp32 absmaxes)."""

    method = "nf4"

    block_size: int = 64
    double_quant: bool = True
    dq_block_size: int = 256

    def validate(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise OneBitError(f"--nf4-block-size must be a positive integer, got {self.block_size}")
        if not isinstance(self.dq_block_size, int) or self.dq_block_size < 1:
            raise OneBitError(f"--nf4-dq-block-size must be a positive integer, got {self.dq_block_size}")


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
