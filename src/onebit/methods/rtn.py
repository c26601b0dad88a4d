"""RTN: round-to-nearest uniform quantization, n bits (2-8), the baseline every method beats.

Math: ``onebit.methods.quant`` (find_qparams / quantize_codes); packed module:
``onebit.nn.quant_linear.QuantLinear``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import parse_dtype
from ..errors import OneBitError
from ..nn.quant_linear import QuantLinear, QuantLinearTrain
from ..registry import register_method
from .actquant import ActQuantConfig
from .common import LayerwiseHandler
from .quant import CLIP_MODES, RTN_BITS


@dataclass
class RTNConfig(ActQuantConfig):
    """Round-to-nearest settings.

    bits: 2..8.  group_size: -1 one scale per tensor, 0 per output channel, g > 0 groups of g
    input columns (the last group of a row may be shorter).  sym: symmetric (no stored zero
    point) or asymmetric (a uint8 zero point per group).  clip: 'minmax' or 'mse' (search the
    clipping ratio with the least squared error per group).  scale_dtype: storage of scales.
    """

    method = "rtn"

    bits: int = 4
    group_size: int = 0
    sym: bool = True
    clip: str = "minmax"
    scale_dtype: str = "float16"

    def validate(self) -> None:
        super().validate()
        if self.bits not in RTN_BITS:
            raise OneBitError(f"--bits {self.bits} not supported by {self.method}; choose one of "
                              f"{', '.join(map(str, RTN_BITS))}")
        if not isinstance(self.group_size, int) or self.group_size < -1:
            raise OneBitError(f"--group-size must be -1 (per tensor), 0 (per channel) or a positive "
                              f"group size, got {self.group_size}")
        if self.clip not in CLIP_MODES:
            raise OneBitError(f"unknown --clip '{self.clip}'; choose one of {', '.join(CLIP_MODES)}")
        if parse_dtype(self.scale_dtype) is None:
            raise OneBitError("scale_dtype must be a concrete dtype, not 'auto'")


class UniformHandler(LayerwiseHandler):
    """Shared by RTN and GPTQ: layer checks, trainable form, empty packed module."""

    config: RTNConfig

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        super().check_layer(name, linear)
        if self.config.group_size > linear.in_features:
            raise OneBitError(f"--group-size {self.config.group_size} is larger than layer '{name}' "
                              f"(in_features {linear.in_features}); use at most {linear.in_features}, "
                              "0 (per channel) or -1 (per tensor)")

    def train_module(self, name: str, linear: nn.Linear) -> QuantLinearTrain:
        c = self.config
        return QuantLinearTrain.from_linear(linear, c.bits, c.group_size, c.sym, c.clip, c.act_bits,
                                            c.static_acts, parse_dtype(c.scale_dtype))

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        c = self.config
        return QuantLinear(in_features, out_features, c.bits, c.group_size, c.sym, bias, c.act_bits,
                           c.static_acts, parse_dtype(c.scale_dtype), bias_dtype=dtype, device="meta")


@register_method(RTNConfig)
class RTNHandler(UniformHandler):
    pass
