"""RTN: round-to-nearest uniform quantization, n bits (2-8), the baseline every method beats.

Math: ``onebit.methods.quant`` (find_qparams / quantize_codes); packed module:
``onebit.nn.quant_linear.QuantLinear``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import parse_dtype
from ..errors import OneBitError
from ..nn.quant_linear import QuantLinear, QuantLinearTrain
from ..registry import register_method
from .common import LayerwiseHandler
from ..method_configs import RTNConfig  # noqa: F401  (torch-free; re-exported)


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
