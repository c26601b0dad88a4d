"""``quantize()``: walk a model, swap its linear layers for a method's modules.

Which layers: every ``nn.Linear`` whose qualified name is not matched by
``config.skip`` (``lm_head`` by default) and whose weight is not shared with
an embedding.  Embeddings and norms are never ``nn.Linear`` and stay as they
are.  The swap is in place; the returned model is the same object with
``model.config.quantization_config`` set, which is what the checkpoint
writer saves.

``embed=`` also quantizes the token embedding (and the head: tied to it, or on its own when
untied) with :class:`onebit.embeddings.EmbedQuantConfig` — a setting apart from the linear
method's config, recorded in ``quantization_config["embed"]``.

The driver (checks, calibration data, the layer-wise or block-sequential path, the swap) is
:func:`onebit.pipelines.quantize.quantize_modules`.  The module surgery (``find_linears``,
``as_linear``, ``set_submodule``, ``prepare_empty``) lives in :mod:`onebit.surgery`; it is
re-exported here.
"""
from __future__ import annotations

import logging
import time

from torch import nn

from .config import QuantConfig
from .embeddings import EmbedQuantConfig
from .pipelines.embeddings import quantize_embeddings  # noqa: F401  (re-exported)
from .pipelines.quantize import quantize_modules
from .errors import OneBitError
from . import rotation
from .registry import get_handler
from .surgery import _is_conv1d, _matches, as_linear, find_linears, prepare_empty, set_submodule  # noqa: F401

log = logging.getLogger("onebit")


def quantize(model: nn.Module, config: QuantConfig, progress: bool = True,
             embed: EmbedQuantConfig | str | None = None, **kwargs) -> nn.Module:
    """Quantize ``model`` in place with ``config``'s method and return it.

    ``embed``: how to store the token embedding and the head (an :class:`EmbedQuantConfig` or
    its kind, e.g. ``"int4"``; default: keep them in the model dtype).  Extra keyword arguments
    go to the method handler (e.g. calibration data for methods that need it).
    """
    embed = EmbedQuantConfig.coerce(embed)
    embed.validate()
    config.validate()
    handler = get_handler(config)
    if getattr(config, "rotate", False):  # residual-stream Hadamard rotation, folded into the weights
        rotation.rotate_like(model, config)
    targets = find_linears(model, config.skip)
    if not targets:
        raise OneBitError("model has no linear layers to quantize (after skipping "
                          f"{', '.join(config.skip) or 'nothing'})")
    modules = {name: [lin.out_features, lin.in_features] for name, lin in targets}
    t0 = time.perf_counter()
    quantize_modules(handler, model, targets, progress=progress, **kwargs)
    log.info("quantized %d linear layers with %s in %.1fs", len(targets), config.method,
             time.perf_counter() - t0)
    qc = config.to_dict()
    qc["modules"] = modules
    model.config.quantization_config = qc
    quantize_embeddings(model, embed)   # after the linears: a head tied to the embedding stays out of them
    return model
