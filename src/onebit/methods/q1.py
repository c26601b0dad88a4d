"""``q1_0``: sign bits plus one trained fp16 scale per block of 128 weights of a row —
llama.cpp's Q1_0 exactly (1.125 bits per weight), so it exports with no ties and no folding.

Initialised by each block's mean |w|; trained by the same distillation as OneBit
(``onebit distill TEACHER OUT --method q1_0``).  Module: ``onebit.nn.block_sign_linear``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.block_sign_linear import BlockSignLinear, BlockSignLinearTrain
from ..registry import MethodHandler, register_method
from .common import check_finite_weight, concrete_scale_dtype
from ..method_configs import Q1Config  # noqa: F401  (torch-free; re-exported)


@register_method(Q1Config)
class Q1Handler(MethodHandler):
    config: Q1Config

    def train_module(self, name: str, linear: nn.Linear) -> BlockSignLinearTrain:
        return BlockSignLinearTrain.from_linear(linear, self.config.group_size)

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        check_finite_weight(name, linear)
        return self.train_module(name, linear).to_packed(concrete_scale_dtype(self.config.scale_dtype))

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        return BlockSignLinear(in_features, out_features, self.config.group_size, bias,
                               concrete_scale_dtype(self.config.scale_dtype), dtype, device="meta")
