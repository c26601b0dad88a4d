"""OneBit (Xu et al. 2024): sign bits + two fp16 value vectors, SVID-initialised."""
from __future__ import annotations

import torch
from torch import nn

from ..nn.onebit_linear import OneBitLinear, OneBitLinearTrain
from ..registry import MethodHandler, register_method
from .common import check_finite_weight, concrete_scale_dtype
from .foldable import init_foldable, tie
from ..method_configs import OneBitConfig  # noqa: F401  (torch-free; re-exported)


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
