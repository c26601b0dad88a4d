"""OneBit (Xu et al. 2024): sign bits + two fp16 value vectors, SVID-initialised."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import OneBitError
from ..nn.onebit_linear import OneBitLinear, OneBitLinearTrain
from ..registry import MethodHandler, register_method
from .common import check_finite_weight, concrete_scale_dtype
from .foldable import init_foldable, tie
from .svid import INIT_METHODS


@dataclass
class OneBitConfig(QuantConfig):
    """OneBit layer settings.

    init: SVID factorisation of |W| ('svd' power iteration or 'nmf').
    layernorm: non-affine LayerNorm on the layer output (the paper's code has
      it; off by default because with SVID init alone it discards the output
      scale, and it did not help after distillation at the sizes we measured).
    scale_dtype: storage dtype of g and h ('float16' as in the paper).
    foldable: tie the input scales so every g folds away and the model exports to llama.cpp's
      Q1_0 exactly (one g shared by q/k/v and one by gate/up; o_proj's and down_proj's g live in
      v_proj's and up_proj's h).  See onebit.methods.foldable.
    """

    method = "onebit"

    init: str = "svd"
    layernorm: bool = False
    scale_dtype: str = "float16"
    foldable: bool = False

    def validate(self) -> None:
        if self.foldable and self.layernorm:
            raise OneBitError("--foldable cannot be combined with --layernorm (the LayerNorm on a "
                              "layer's output does not fold into llama.cpp's Q1_0)")
        if self.init not in INIT_METHODS:
            raise OneBitError(f"unknown --init '{self.init}'; choose one of {', '.join(INIT_METHODS)}")
        concrete_scale_dtype(self.scale_dtype)


@register_method(OneBitConfig)
class OneBitHandler(MethodHandler):
    config: OneBitConfig

    def train_module(self, name: str, linear: nn.Linear) -> OneBitLinearTrain:
        """The trainable (latent-weight) form, SVID-initialised."""
        return OneBitLinearTrain.from_linear(linear, self.config.init, self.config.layernorm)

    def train_modules(self, model: nn.Module, targets) -> dict[str, nn.Module]:
        mods = super().train_modules(model, targets)
        if self.config.foldable:
            init_foldable(model.config, mods, self.config.init)
        return mods

    def tie_trainable(self, model: nn.Module, mods: dict[str, nn.Module]) -> None:
        if self.config.foldable:
            tie(model.config, mods)

    def quantize_model(self, model: nn.Module, targets, progress: bool = True, **kwargs):
        if not self.config.foldable:
            return super().quantize_model(model, targets, progress=progress, **kwargs)
        for name, lin in targets:
            check_finite_weight(name, lin)
        dtype = concrete_scale_dtype(self.config.scale_dtype)
        return {n: m.to_packed(dtype) for n, m in self.train_modules(model, targets).items()}

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        check_finite_weight(name, linear)
        return self.train_module(name, linear).to_packed(concrete_scale_dtype(self.config.scale_dtype))

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        return OneBitLinear(in_features, out_features, bias, self.config.layernorm,
                            scale_dtype=concrete_scale_dtype(self.config.scale_dtype), bias_dtype=dtype,
                            device="meta")
