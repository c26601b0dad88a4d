"""Orchestration shared by the methods with activation quantization / calibration.

:class:`LayerwiseHandler` quantizes layers independently (RTN, BitNet, ternary,
OneBit-W1A8); when the config asks for static activation scales it then
swaps the quantized layers in and calibrates the scales
(:func:`onebit.methods.actquant.calibrate_static_scales`).

Calibration data (:func:`calibration_ids`): ``calib_ids=`` passed to
``quantize()`` (so a comparison reuses one set), else a training file named
by ``config.calib_file`` (evaluation files are refused), else text the
teacher generates (``onebit.calibration.teacher_samples``).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..calibration import calibration_ids  # noqa: F401  (it lived here)
from ..config import parse_dtype
from ..errors import OneBitError
from ..registry import MethodHandler
from ..surgery import set_submodule
from .actquant import ActQuantConfig, calibrate_static_scales

log = logging.getLogger("onebit")


def check_finite_weight(name: str, linear: nn.Linear) -> None:
    """One-line error for a layer whose weight holds NaN or Inf (a meta weight passes)."""
    if linear.weight.device.type != "meta" and not torch.isfinite(linear.weight).all():
        raise OneBitError(f"weight of '{name}' contains NaN or Inf; refusing to quantize it")


def concrete_scale_dtype(value: str) -> torch.dtype:
    """A config's ``scale_dtype`` as a torch dtype; 'auto' (no concrete dtype) is refused."""
    dtype = parse_dtype(value)
    if dtype is None:
        raise OneBitError("scale_dtype must be a concrete dtype, not 'auto'")
    return dtype


class _NeedsCalibration:
    """``handler.needs_calibration`` from its config (static activation scales); ``False`` on the class."""

    def __get__(self, obj, cls=None) -> bool:
        return False if obj is None else obj.config.needs_calibration()


class LayerwiseHandler(MethodHandler):
    """Independent per-layer quantization, then (optionally) static activation calibration."""

    config: ActQuantConfig

    needs_calibration = _NeedsCalibration()  # type: ignore[assignment]

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        """Raise :class:`OneBitError` if the method cannot quantize this layer."""
        if linear.weight.device.type != "meta" and not torch.isfinite(linear.weight).all():
            raise OneBitError(f"weight of '{name}' contains NaN or Inf; refusing to quantize it")

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        if self.config.static_acts and kwargs.get("calib_ids") is None:
            raise OneBitError(f"{self.config.method} with static activation scales needs calibration "
                              "through the whole model (quantize(), not one layer at a time / --streaming)")
        self.check_layer(name, linear)
        return self.train_module(name, linear).to_packed()

    def quantize_layers(self, model, targets, progress, **kwargs) -> dict[str, nn.Module]:
        return MethodHandler.quantize_model(self, model, targets, progress, **kwargs)

    def quantize_model(self, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                       progress: bool = True, calib_ids: torch.Tensor | None = None, tokenizer=None,
                       **kwargs) -> dict[str, nn.Module]:
        for name, lin in targets:       # every layer checked before any work
            self.check_layer(name, lin)
        ids = None
        if self.needs_calibration:       # teacher data from the unquantized model
            ids = calibration_ids(model, self.config, calib_ids, tokenizer, progress)
        mods = self.quantize_layers(model, targets, progress, calib_ids=ids, **kwargs)
        if self.config.static_acts:
            for name, m in mods.items():
                set_submodule(model, name, m)
            calibrate_static_scales(model, mods, ids, self.config, progress=progress)
        return mods
