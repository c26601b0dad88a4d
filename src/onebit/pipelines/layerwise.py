"""The layer-wise path: every target linear quantized on its own (RTN, OneBit, BitNet, NF4, ...).

The handler's :meth:`~onebit.registry.MethodHandler.quantize_model` answers with the packed modules
(by default :meth:`~onebit.registry.MethodHandler.quantize_linear` per layer, with a progress bar;
a method whose layers share parameters or need one calibration pass overrides it); nothing is
swapped there — :func:`onebit.pipelines.quantize.quantize_modules` swaps.
"""
from __future__ import annotations

from torch import nn

from ..registry import MethodHandler


def quantize_layers(handler: MethodHandler, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                    progress: bool = True, **kwargs) -> dict[str, nn.Module]:
    """``{name: packed module}`` for ``targets`` (extra keyword arguments go to the handler)."""
    packed = handler.quantize_model(model, targets, progress=progress, **kwargs)
    missing = [n for n, _ in targets if n not in packed]
    if missing:
        raise RuntimeError(f"method '{handler.config.method}' returned no module for {missing[:4]}")
    return packed
