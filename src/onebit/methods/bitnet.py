"""BitNet W1A8 (Wang et al. 2023) and BitNet b1.58 W1.58A8 (Ma et al. 2024) as post-training
quantizers, plus OneBit-W1A8 (the OneBit layer with int8 activations).

* ``bitnet``: ``W ≈ sign(W - mean W) · mean|W|`` (1 bit + one scale per layer);
* ``ternary``: ``W ≈ RoundClip(W / mean|W|, -1, 1) · mean|W|`` (2-bit codes);
* ``onebit-w1a8``: OneBit's ``((X ⊙ g) · sign(W)ᵀ) ⊙ h`` with ``X ⊙ g`` quantized.

All three quantize activations absmax int8 per token by default (``act_bits=8``,
``act_mode='dynamic'``); ``--act-bits 0`` turns it off, ``--act-mode static`` uses
calibrated per-layer scales.  Math: ``onebit.methods.quant`` (binarize, ternarize) and
``onebit.methods.actquant``; modules: ``onebit.nn.bitnet_linear``,
``onebit.nn.onebit_a8_linear``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import parse_dtype
from ..nn.bitnet_linear import BinaryLinear, BitNetLinearTrain, TernaryLinear
from ..nn.onebit_a8_linear import OneBitLinearA8, OneBitLinearA8Train
from ..nn.onebit_linear import OneBitLinearTrain
from ..registry import register_method
from .common import LayerwiseHandler
from ..method_configs import BitNetConfig, TernaryConfig, OneBitW1A8Config  # noqa: F401  (torch-free; re-exported)


class _BitNetHandler(LayerwiseHandler):
    ternary = False

    def train_module(self, name: str, linear: nn.Linear) -> BitNetLinearTrain:
        c = self.config
        return BitNetLinearTrain.from_linear(linear, self.ternary, c.act_bits, c.static_acts)

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        cls = TernaryLinear if self.ternary else BinaryLinear
        return cls(in_features, out_features, bias, self.config.act_bits, self.config.static_acts,
                   bias_dtype=dtype, device="meta")


@register_method(BitNetConfig)
class BitNetHandler(_BitNetHandler):
    ternary = False


@register_method(TernaryConfig)
class TernaryHandler(_BitNetHandler):
    ternary = True


@register_method(OneBitW1A8Config)
class OneBitW1A8Handler(LayerwiseHandler):
    config: OneBitW1A8Config

    def train_module(self, name: str, linear: nn.Linear) -> OneBitLinearA8Train:
        c = self.config
        base = OneBitLinearTrain.from_linear(linear, c.init, c.layernorm)
        m = OneBitLinearA8Train.from_onebit(base, c.act_bits, c.static_acts)
        m.scale_dtype = parse_dtype(c.scale_dtype)
        return m

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        c = self.config
        return OneBitLinearA8(in_features, out_features, bias, c.layernorm, parse_dtype(c.scale_dtype),
                              dtype, c.act_bits, c.static_acts, device="meta")
