"""AWQ (Lin et al. 2024): activation-aware weight quantization.

A per-input-channel scale ``s`` protects the weight columns that meet large activations:
``y = W x = (W ⊙ s)(x / s)``; the weight is quantized as ``Q(W ⊙ s)`` (group RTN, the grid of
:mod:`onebit.methods.quant`) and ``1 / s`` goes into the op before the layer.

Math (pure functions):

* :func:`awq_scales`: ``s = mean|x|^α`` (clamped at 1e-4), normalised by ``sqrt(max(s)·min(s))``;
  ``α = 0`` gives ``s = 1`` exactly.
* :func:`awq_output_error`: ``Σ_layers tr(ΔW H ΔWᵀ)`` with ``ΔW = Q(W ⊙ s) / s - W`` and ``H`` the
  mean of ``x xᵀ`` over the calibration tokens: the mean squared output error of the quantized
  layers on the calibration inputs, from their Gram matrix (no token loop).
* :func:`awq_search`: the grid ``α ∈ {0, 1/n, ..., (n-1)/n}``; the ``s`` with the least error
  (``α = 0``, i.e. plain RTN, wins ties, so AWQ never does worse than RTN on the calibration set).

Where ``1 / s`` goes (:func:`awq_groups`, Llama-family names; a layer set shares one ``s`` when
it shares its input):

* ``q_proj, k_proj, v_proj`` -> the block's ``input_layernorm`` weight (RMSNorm / LayerNorm);
* ``gate_proj, up_proj`` -> ``post_attention_layernorm``;
* ``down_proj`` -> the rows of ``up_proj`` (the gated MLP is linear in ``up``'s output);
* ``o_proj`` -> the rows of ``v_proj`` when they line up (``v.out == o.in``: multi-head
  attention); with grouped-query attention (stories3M, SmolLM2) they do not, and
* every layer without a foldable op before it keeps ``s`` as an explicit fp16 ``input_scale``
  [in] in its packed module (:class:`onebit.nn.awq_linear.AWQLinear`, ``y = Q(W ⊙ s)(x / s)``);
  the config's ``input_scaled`` lists those layers (filled by quantization, read by loading).

A norm folds only if it is ``y = w ⊙ x̂ (+ b)`` (LlamaRMSNorm-like or ``nn.LayerNorm``; Gemma's
``1 + w`` is not) and every layer reading it is a target.  The folded layers are plain
:class:`~onebit.nn.quant_linear.QuantLinear` modules: same tensors and bits as RTN.

Orchestration: like GPTQ, a ``"blocks"`` driver (:mod:`onebit.pipelines.sequential`) — the inputs
of each block come from the already-quantized blocks before it; ``observe`` collects each layer's
:class:`InputStats` on the block's float inputs, then ``quantize_block`` searches every scale,
applies them all, and quantizes the block's layers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..config import parse_dtype
from ..errors import OneBitError
from ..nn.awq_linear import AWQLinear
from ..nn.quant_linear import QuantLinear, QuantLinearTrain
from ..registry import register_method
from .quant import fake_quantize
from .rtn import RTNConfig, UniformHandler
from ..method_configs import AWQConfig  # noqa: F401  (torch-free; re-exported)

log = logging.getLogger("onebit")

#: the smallest ``mean|x|^α`` kept (AWQ's clamp), so a dead channel does not give ``s = 0``
MIN_SCALE = 1e-4


# ------------------------------------------------------------------- math
def awq_scales(x_absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = mean|x|^α`` (clamped at :data:`MIN_SCALE`) over ``sqrt(max(s) min(s))``; 1 at α = 0."""
    s = x_absmean.float().pow(alpha).clamp_min(MIN_SCALE)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def awq_output_error(weights: list[torch.Tensor], s: torch.Tensor, H: torch.Tensor,
                     quant: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """``Σ tr(ΔW H ΔWᵀ)``, ``ΔW = quant(W ⊙ s) / s - W``: the summed mean squared output error of
    the quantized layers over inputs with second moment ``H = mean(x xᵀ)``."""
    err = 0.0
    H = H.float()
    for W in weights:
        W = W.float()
        D = quant(W * s) / s - W
        err += float(((D @ H) * D).sum())
    return err


@torch.no_grad()
def awq_search(weights: list[torch.Tensor], H: torch.Tensor, x_absmean: torch.Tensor,
               quant: Callable[[torch.Tensor], torch.Tensor], n_grid: int = 20,
               alpha: float | None = None, scale_dtype: torch.dtype | None = None
               ) -> tuple[torch.Tensor, float, dict[float, float]]:
    """``(s, α, {α: error})``: the scale with the least :func:`awq_output_error` over the grid
    ``α = i / n_grid`` (or only the given ``alpha``); ``scale_dtype`` rounds ``s`` (a stored scale)."""
    alphas = [alpha] if alpha is not None else [i / n_grid for i in range(n_grid)]
    best: tuple[float, float, torch.Tensor] | None = None
    errors = {}
    for a in alphas:
        s = awq_scales(x_absmean, a)
        if scale_dtype is not None:
            s = s.to(scale_dtype).float()
        e = awq_output_error(weights, s, H, quant)
        errors[a] = e
        if best is None or e < best[0]:
            best = (e, a, s)
    assert best is not None
    return best[2], best[1], errors


class InputStats:
    """Running ``H = mean(x xᵀ)`` and ``mean|x|`` per input channel over every token seen."""

    def __init__(self, in_features: int, device=None):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.absmean = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        w = self.n / (self.n + m)
        self.H.mul_(w).add_(x.T @ x / (self.n + m))
        self.absmean.mul_(w).add_(x.abs().sum(0) / (self.n + m))
        self.n += m


# ------------------------------------------------------------------- where 1/s goes
@dataclass
class ScaleGroup:
    """Linears sharing one input (and one ``s``), and the op ``1 / s`` folds into (None: kept
    explicit).  ``prev_kind``: 'norm' (weight [in], bias) or 'linear' (rows of a linear)."""

    names: list[str]
    prev: nn.Module | None = None
    prev_kind: str | None = None


def _foldable_norm(mod: nn.Module | None, width: int) -> bool:
    if mod is None or getattr(mod, "weight", None) is None or tuple(mod.weight.shape) != (width,):
        return False
    cls = type(mod).__name__
    return isinstance(mod, nn.LayerNorm) or (cls.endswith("RMSNorm") and "Gemma" not in cls)


def awq_groups(block: nn.Module, block_prefix: str, targets: dict[str, nn.Linear]) -> list[ScaleGroup]:
    """The scale groups of one decoder block (see the module doc); every target is in one group."""
    local = {n[len(block_prefix):]: n for n in targets}
    by_tail: dict[tuple[str, str], str] = {}
    for ln, full in local.items():
        parent, _, tail = ln.rpartition(".")
        by_tail[(parent, tail)] = full
    groups: list[ScaleGroup] = []
    used: set[str] = set()

    def get(parent: str, tail: str) -> str | None:
        return by_tail.get((parent, tail))

    parents = sorted({p for p, _ in by_tail})
    for parent in parents:
        for members, norm_name in ((("q_proj", "k_proj", "v_proj"), "input_layernorm"),
                                   (("gate_proj", "up_proj"), "post_attention_layernorm")):
            names = [get(parent, t) for t in members]
            if any(n is None for n in names):
                continue
            norm = getattr(block, norm_name, None)
            width = targets[names[0]].in_features
            ok = _foldable_norm(norm, width)
            groups.append(ScaleGroup(names, norm if ok else None, "norm" if ok else None))
            used.update(names)
        for tail, prev_tail in (("o_proj", "v_proj"), ("down_proj", "up_proj")):
            n, p = get(parent, tail), get(parent, prev_tail)
            if n is None or n in used:
                continue
            ok = p is not None and targets[p].out_features == targets[n].in_features
            groups.append(ScaleGroup([n], targets[p] if ok else None, "linear" if ok else None))
            used.add(n)
    for full in targets:
        if full not in used:
            groups.append(ScaleGroup([full]))
    return groups


@torch.no_grad()
def fold_inverse_scale(prev: nn.Module, kind: str, s: torch.Tensor) -> None:
    """``prev``'s output divided by ``s`` per channel: a norm's weight (and bias), or a linear's rows."""
    w = prev.weight
    if kind == "norm":
        w.div_(s.to(w.dtype))
    elif kind == "linear":
        w.div_(s.to(w.dtype).unsqueeze(1))
    else:
        raise ValueError(f"unknown fold kind '{kind}'")
    b = getattr(prev, "bias", None)
    if b is not None:
        b.div_(s.to(b.dtype))


# ------------------------------------------------------------------- method


class InputScaledHandler(UniformHandler):
    """RTN weights of ``W ⊙ s``, ``s`` one scale per input channel from calibration (AWQ, SmoothQuant):
    ``1 / s`` is folded into the module before, or kept as the packed layer's ``input_scale`` (a
    :attr:`scaled_cls`; the config's ``input_scaled`` lists those layers)."""

    scaled_cls: type[AWQLinear] = AWQLinear
    distill_from = "rtn"   # the method to distil from instead (no trainable form here)

    def _packed(self, linear: nn.Linear, s: torch.Tensor | None) -> nn.Module:
        """Quantize ``linear`` (whose columns already hold ``W ⊙ s``) -> QuantLinear / :attr:`scaled_cls`."""
        c = self.config
        q = QuantLinearTrain.from_linear(linear, c.bits, c.group_size, c.sym, c.clip, c.act_bits,
                                         c.static_acts, parse_dtype(c.scale_dtype)).to_packed()
        return q if s is None else self.scaled_cls.from_quant_linear(q, s)

    def train_module(self, name: str, linear: nn.Linear):
        raise OneBitError(f"{self.config.method} has no trainable form (its scales come from calibration); "
                          f"distill from {self.distill_from} instead")

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        raise OneBitError(f"{self.config.method} needs calibration activations through the whole model "
                          "(quantize(), not one layer at a time / --streaming)")

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        c = self.config
        cls = self.scaled_cls if name in c.input_scaled else QuantLinear
        return cls(in_features, out_features, c.bits, c.group_size, c.sym, bias, c.act_bits,
                   c.static_acts, parse_dtype(c.scale_dtype), bias_dtype=dtype, device="meta")


@register_method(AWQConfig)
class AWQHandler(InputScaledHandler):
    config: AWQConfig

    driver = "blocks"
    distill_from = "rtn or gptq"

    def _quant(self) -> Callable[[torch.Tensor], torch.Tensor]:
        c = self.config
        sd = parse_dtype(c.scale_dtype)
        return lambda w: fake_quantize(w, c.bits, c.sym, c.group_size, c.clip, sd)

    def begin_blocks(self, prefix: str) -> None:
        self.config.input_scaled = []
        self.alphas: dict[str, float] = {}
        self._prefix = prefix
        self._stats: dict[str, InputStats] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        st = self._stats.get(name)
        if st is None:
            st = self._stats[name] = InputStats(x.shape[-1], x.device)
        st.add(x)

    @torch.no_grad()
    def quantize_block(self, block: nn.Module, prefix: str, lins: dict[str, nn.Linear]) -> dict[str, nn.Module]:
        """Search, apply and quantize one block's layers (from the :class:`InputStats` observed);
        each layer's α goes to ``self.alphas``."""
        stats = {n: self._stats.pop(n, None) or InputStats(lin.in_features, lin.weight.device)
                 for n, lin in lins.items()}
        packed, alphas = self.search_block(block, prefix, lins, stats)
        self.alphas.update(alphas)
        return packed

    def quantize_outside(self, name: str, linear: nn.Linear) -> nn.Module:
        """s = 1: round to nearest."""
        return self._packed(linear, None)

    def end_blocks(self, packed: dict[str, nn.Module]) -> None:
        self.config.input_scaled = sorted(n for n, m in packed.items() if isinstance(m, AWQLinear))
        if self.alphas:
            log.info("AWQ: α per layer: %s", ", ".join(f"{n.removeprefix(self._prefix)}={a:.2f}"
                                                       for n, a in self.alphas.items()))

    @torch.no_grad()
    def search_block(self, block: nn.Module, block_prefix: str, lins: dict[str, nn.Linear],
                     stats: dict[str, InputStats]) -> tuple[dict[str, nn.Module], dict]:
        """Search, apply and quantize one block's layers; ``({name: packed}, {name: α})``."""
        c = self.config
        groups = awq_groups(block, block_prefix, lins)
        quant = self._quant()
        plan = []
        for g in groups:
            first = stats[g.names[0]]
            if any(not torch.allclose(stats[n].absmean, first.absmean, rtol=1e-4, atol=1e-6)
                   for n in g.names[1:]):    # not one shared input after all: one group each
                plan += [(ScaleGroup([n]), stats[n]) for n in g.names]
            else:
                plan.append((g, first))
        scales: dict[str, torch.Tensor | None] = {}
        alphas: dict[str, float] = {}
        for g, st in plan:
            fold = c.fold and g.prev is not None
            W = [lins[n].weight for n in g.names]
            s, a, _ = awq_search(W, st.H, st.absmean, quant, c.n_grid, c.alpha,
                                 None if fold else torch.float16)
            unit = bool((s == 1).all())
            for n in g.names:
                alphas[n] = a
                scales[n] = None if (fold or unit) else s
            if unit:
                continue
            for n in g.names:
                lins[n].weight.mul_(s.to(lins[n].weight.dtype))
            if fold:
                fold_inverse_scale(g.prev, g.prev_kind, s)
        return {n: self._packed(lins[n], scales[n]) for n in lins}, alphas
