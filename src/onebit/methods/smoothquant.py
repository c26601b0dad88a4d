"""SmoothQuant (Xiao et al. 2022, arXiv 2211.10438): W8A8 with activation outliers migrated into
the weights.

Per linear input channel ``j``: ``s_j = max|X_j|^α / max|W_:,j|^(1-α)`` (math:
:mod:`onebit.methods.smoothing`), ``max|X_j|`` from one float pass over calibration data (the
teacher's own text or a training file, :func:`onebit.calibration.calibration_ids`; never an
evaluation file).  The layer computes ``(X / s)(W ⊙ s)ᵀ``: the weight is quantized as ``W ⊙ s`` —
int8 per output row by default (:class:`~onebit.nn.quant_linear.QuantLinear`, the RTN grid of
:mod:`onebit.methods.quant`) — and the smoothed activation ``X / s`` as int8, either **dynamic**
(absmax per token at run time) or **static** (one calibrated per-tensor scale; ``act_mode``,
``act_observer``), the activation quantizer of :mod:`onebit.methods.actquant`.

Where ``1 / s`` goes is AWQ's plan (:func:`onebit.methods.awq.awq_groups`; layers sharing an input
share one ``s``, computed over all their weights):

* ``q_proj, k_proj, v_proj`` -> ``input_layernorm``'s weight; ``gate_proj, up_proj`` ->
  ``post_attention_layernorm``'s (RMSNorm / LayerNorm, not Gemma's ``1 + w``);
* ``down_proj`` -> the rows of ``up_proj``; ``o_proj`` -> the rows of ``v_proj`` when they line
  up (multi-head attention).  Per-row weight scales absorb a row scaling, so these folds cost
  nothing in the weight quantization;
* every other layer (``o_proj`` under grouped-query attention: stories3M, SmolLM2) keeps ``s`` as
  an explicit fp16 ``input_scale`` in its packed module
  (:class:`~onebit.nn.smoothquant_linear.SmoothQuantLinear`, ``y = Q(W ⊙ s) A(x / s)``); the
  config's ``input_scaled`` lists those layers (filled by quantization, read back by loading).

``smooth=False`` keeps ``s = 1``: plain W8A8 with the same quantizers, tensor for tensor the model
``RTNConfig(bits=8, act_bits=8)`` gives (``rtn-w8-a8``; tested).  ``α = 0`` is *not* that: it sets
``s_j = 1 / max|W_:,j|`` (every smoothed weight column's max is 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import OneBitError
from ..nn.smoothquant_linear import SmoothQuantLinear
from ..registry import register_method
from .awq import InputScaledHandler, awq_groups, fold_inverse_scale
from ..calibration import calibration_ids
from .llm_int8 import input_absmax
from .rtn import RTNConfig
from .smoothing import smooth_scales, weight_absmax
from ..walk import find_blocks

log = logging.getLogger("onebit")


@dataclass
class SmoothQuantConfig(RTNConfig):
    """SmoothQuant settings: RTN's weight grid (bits 8, per output channel by default) and the
    activation quantizer (act_bits 8; act_mode 'dynamic' per token or 'static' calibrated per
    tensor; act_observer for static) plus

    alpha: migration strength α in [0, 1], ``s = max|X|^α / max|W|^(1-α)`` (0.5, the paper's).
    smooth: False keeps s = 1 (plain W8A8 with the same quantizers, the baseline).
    fold: fold ``1 / s`` into the norm / linear before a layer where possible (False: every layer
    keeps an explicit fp16 input scale).  input_scaled: filled by quantization, the layers whose
    packed module stores ``input_scale`` (read back when loading).
    """

    method = "smoothquant"

    bits: int = field(default=8, metadata={"help": "weight bits, 2-8 (W8A8: 8)"})
    act_bits: int = field(default=8, metadata={"help": "activation bits, 2-8 (8 = int8)"})
    alpha: float = field(default=0.5, metadata={
        "help": "migration strength in [0, 1]: s = max|X|^alpha / max|W|^(1-alpha) (the paper's 0.5)",
        "aliases": ("--sq-alpha",)})
    smooth: bool = field(default=True, metadata={
        "help": "migrate the activation outliers (--no-smooth: s = 1, plain W8A8 with the same quantizers)"})
    fold: bool = field(default=True, metadata={
        "help": "fold 1/s into the op before a layer where possible (--no-fold: every layer keeps an "
        "explicit input scale)"})
    input_scaled: list[str] = field(default_factory=list, metadata={
        "cli": False, "help": "filled by quantization: the layers whose packed module stores input_scale"})

    def validate(self) -> None:
        super().validate()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0 <= self.alpha <= 1:
            raise OneBitError(f"smoothquant alpha must be in [0, 1], got {self.alpha}")
        if self.act_bits == 0:
            raise OneBitError("smoothquant quantizes activations: act_bits must be 2..8 (8 = int8), got 0")

    def needs_calibration(self) -> bool:
        return True


@register_method(SmoothQuantConfig)
class SmoothQuantHandler(InputScaledHandler):
    config: SmoothQuantConfig

    scaled_cls = SmoothQuantLinear

    @torch.no_grad()
    def smooth(self, model: nn.Module, lins: dict[str, nn.Linear],
               amax: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Compute every group's ``s`` (from the unmodified weights), then apply them all:
        ``W ⊙ s`` and ``1 / s`` folded or returned (``{layer: s}`` for the explicit ones)."""
        c = self.config
        found = find_blocks(model, list(lins))
        if found is None:
            raise OneBitError("smoothquant found no decoder blocks (nn.ModuleList) holding the linear layers")
        bname, blocks = found
        prefix = f"{bname}." if bname else ""
        plan = []
        for bi, block in enumerate(blocks):
            bp = f"{prefix}{bi}."
            mine = {n: m for n, m in lins.items() if n.startswith(bp)}
            for g in awq_groups(block, bp, mine) if mine else []:
                x = amax[g.names[0]]
                if any(not torch.allclose(amax[n], x, rtol=1e-4, atol=1e-6) for n in g.names[1:]):
                    members = [([n], None, None) for n in g.names]     # not one shared input after all
                else:
                    members = [(g.names, g.prev, g.prev_kind)]
                for names, prev, kind in members:
                    fold = c.fold and prev is not None
                    s = smooth_scales(amax[names[0]], weight_absmax([lins[n].weight for n in names]),
                                      c.alpha)
                    if not fold:                  # stored fp16: apply the stored value exactly
                        s = s.to(torch.float16).float()
                    plan.append((names, prev if fold else None, kind, s))
        smoothed = {n for names, *_ in plan for n in names}
        rest = [n for n in lins if n not in smoothed]
        if rest:
            log.warning("smoothquant: %d linear layer(s) outside the decoder blocks keep s = 1 (plain "
                        "W8A8): %s", len(rest), ", ".join(rest[:4]))
        explicit: dict[str, torch.Tensor] = {}
        for names, prev, kind, s in plan:
            for n in names:
                w = lins[n].weight
                w.mul_(s.to(w.device, w.dtype))
                if prev is None:
                    explicit[n] = s
            if prev is not None:
                fold_inverse_scale(prev, kind, s.to(prev.weight.device))
        ratio = [float(amax[n].max() / amax[n].clamp_min(1e-8).median()) for names, *_ in plan for n in names[:1]]
        if ratio:
            log.info("smoothquant: α=%.2f on %d input groups (%d explicit); calibration max|x| of the "
                     "largest channel over the median channel: up to %.1fx before smoothing",
                     c.alpha, len(plan), len(explicit), max(ratio))
        return explicit

    def quantize_model(self, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                       progress: bool = True, calib_ids: torch.Tensor | None = None, tokenizer=None,
                       batch_size: int = 8, **kwargs) -> dict[str, nn.Module]:
        c = self.config          # the pipeline has checked every layer (check_layer) already
        c.input_scaled = []
        ids = calibration_ids(model, c, calib_ids, tokenizer, progress)
        lins = dict(targets)
        explicit: dict[str, torch.Tensor] = {}
        if c.smooth:
            explicit = self.smooth(model, lins, input_absmax(model, lins, ids, batch_size))
        out = {n: self._packed(lin, explicit.get(n)) for n, lin in targets}
        c.input_scaled = sorted(n for n, m in out.items() if isinstance(m, SmoothQuantLinear))
        return out      # the pipeline swaps them in, then calibrates static activation scales
