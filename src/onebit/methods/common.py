"""What the layer-wise methods share: weight checks and the handler base class.

:class:`LayerwiseHandler` quantizes layers independently (RTN, BitNet, ternary, OneBit-W1A8; GPTQ
and AWQ build on it); the pipeline (:mod:`onebit.pipelines.quantize`) drives it, swaps the layers
in, and then calls its :meth:`~LayerwiseHandler.calibrate_activations` for static activation
scales (:func:`onebit.methods.actquant.calibrate_static_scales`).

Calibration data is :func:`onebit.calibration.calibration_ids` (re-exported here).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..calibration import calibration_ids  # noqa: F401  (it lived here)
from ..config import parse_dtype
from ..errors import OneBitError
from ..registry import MethodHandler
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


class LayerwiseHandler(MethodHandler):
    """Independent per-layer quantization (the pipeline's ``"layers"`` driver), then — when the
    config asks for static activation scales — their calibration once the layers are swapped in."""

    config: ActQuantConfig

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        """Raise :class:`OneBitError` if the method cannot quantize this layer."""
        check_finite_weight(name, linear)

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        if self.config.static_acts and kwargs.get("calib_ids") is None:
            raise OneBitError(f"{self.config.method} with static activation scales needs calibration "
                              "through the whole model (quantize(), not one layer at a time / --streaming)")
        self.check_layer(name, linear)
        return self.train_module(name, linear).to_packed()

    def calibrate_activations(self, model: nn.Module, packed: dict[str, nn.Module],
                              calib_ids: torch.Tensor | None, progress: bool = True) -> None:
        if self.config.static_acts:
            calibrate_static_scales(model, packed, calib_ids, self.config, progress=progress)
