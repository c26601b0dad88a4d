"""The in-memory quantize driver behind :func:`onebit.quantize`: one entry, two paths.

:func:`quantize_modules` checks every target layer first (``handler.check_layer``), makes the
calibration ids when the handler needs them (:func:`onebit.calibration.calibration_ids`: the
``calib_ids=`` given, a training file, or the teacher's own text), quantizes by the handler's
``driver`` — ``"layers"`` (:mod:`.layerwise`) or ``"blocks"`` (:mod:`.sequential`) — swaps every
packed module in (:func:`onebit.surgery.set_submodule`), then lets the handler calibrate static
activation scales on the swapped model.
"""
from __future__ import annotations

import torch
from torch import nn

from ..calibration import calibration_ids
from ..errors import OneBitError
from ..registry import MethodHandler
from ..surgery import set_submodule
from .layerwise import quantize_layers
from .sequential import quantize_blocks


def quantize_modules(handler: MethodHandler, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                     progress: bool = True, calib_ids: torch.Tensor | None = None, tokenizer=None,
                     batch_size: int = 8, **kwargs) -> dict[str, nn.Module]:
    """Quantize ``targets`` of ``model`` with ``handler`` and swap them in; ``{name: packed}``."""
    for name, lin in targets:          # every layer checked before any work
        handler.check_layer(name, lin)
    needs = handler.needs_calibration
    ids = calibration_ids(model, handler.config, calib_ids, tokenizer, progress) if needs else None
    if handler.driver == "blocks":
        if ids is None:
            raise OneBitError(f"method '{handler.config.method}' runs block by block on calibration data; "
                              "its config must ask for calibration")
        packed = quantize_blocks(handler, model, targets, ids, progress, batch_size)
    elif handler.driver == "layers":
        extra = dict(kwargs)
        if needs or calib_ids is not None:
            extra["calib_ids"] = ids if needs else calib_ids
        if tokenizer is not None:
            extra["tokenizer"] = tokenizer
        if batch_size != 8:
            extra["batch_size"] = batch_size
        packed = quantize_layers(handler, model, targets, progress, **extra)
    else:
        raise OneBitError(f"method '{handler.config.method}' has unknown driver '{handler.driver}'")
    for name, mod in packed.items():
        set_submodule(model, name, mod)
    handler.calibrate_activations(model, packed, ids, progress=progress)
    return packed
