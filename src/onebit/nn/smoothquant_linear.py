"""SmoothQuant's packed linear for a layer whose smoothing scale could not be folded into the op
before it (``o_proj`` under grouped-query attention, any layer without a foldable predecessor).

The same tensors and forward as :class:`~onebit.nn.awq_linear.AWQLinear` (the arithmetic is
identical: a per-input-channel ``s`` stored fp16 ``[in]`` as ``input_scale``, weight quantized as
``W ⊙ s``, ``y = Q(W ⊙ s)(x / s)``), with activation quantization (int8 per token, or a calibrated
per-tensor ``act_scale``) applied to the smoothed input ``x / s`` — that is the point of SmoothQuant.
A class of its own so a SmoothQuant checkpoint's modules say what they are.

Layers whose ``1 / s`` was folded into an RMSNorm weight or the rows of the linear before them are
plain :class:`~onebit.nn.quant_linear.QuantLinear` modules (int8 codes, fp16 per-row scales).
"""
from __future__ import annotations

from .awq_linear import AWQLinear


class SmoothQuantLinear(AWQLinear):
    """``y = Q(W ⊙ s) · A(x / s) + b``: ``Q`` per-row int weights, ``A`` the activation quantizer."""
