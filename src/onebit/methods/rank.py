"""``onebit-rank``: OneBit with rank-k scales, ``W ≈ sign(W) ⊙ (H Gᵀ)`` (k = 1 is OneBit).

Initialised by rank-k SVID of ``|W|`` (:func:`onebit.methods.multiscale.svid_rank`), trained by
the same distillation as OneBit (``onebit distill TEACHER OUT --method onebit-rank``).
Module: :mod:`onebit.nn.rank_linear`.  Bits per weight:
``(out·⌈in/8⌉·8 + 16·k·(in + out)) / (out·in)`` with fp16 scales.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import OneBitError
from ..nn.rank_linear import RankScaleLinear, RankScaleLinearTrain
from ..registry import MethodHandler, register_method
from .common import check_finite_weight, concrete_scale_dtype
from .svid import INIT_METHODS


def check_count(value, what: str) -> None:
    """One-line error unless ``value`` is an integer >= 1 (``what``: the flag's name)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OneBitError(f"{what} must be an integer >= 1, got {value!r}")


@dataclass
class RankConfig(QuantConfig):
    """OneBit with rank-k scales.

    rank: number of (h_r, g_r) scale pairs k; 1 is OneBit exactly.
    init: rank-k SVID of |W| ('svd': greedy deflation of leading singular pairs, or 'nmf').
    scale_dtype: storage dtype of G and H ('float16' as OneBit).
    """

    method = "onebit-rank"
    #: ``onebit compare`` spec: ``onebit-rank3`` sets ``rank = 3``
    spec_number = "rank"

    rank: int = field(default=2, metadata={"help": "scale pairs k: W ≈ sign(W) ⊙ (H Gᵀ), H out×k, "
                                                   "G in×k; 1 = OneBit"})
    init: str = field(default="svd", metadata={"help": "rank-k SVID of |W|: svd (greedy deflation) "
                                                       "or nmf"})
    scale_dtype: str = field(default="float16", metadata={"help": "storage dtype of G and H"})

    def validate(self) -> None:
        check_count(self.rank, "--rank")
        if self.init not in INIT_METHODS:
            raise OneBitError(f"unknown --init '{self.init}'; choose one of {', '.join(INIT_METHODS)}")
        concrete_scale_dtype(self.scale_dtype)


@register_method(RankConfig)
class RankHandler(MethodHandler):
    config: RankConfig

    def check_layer(self, name: str, linear: nn.Linear) -> None:
        check_finite_weight(name, linear)
        k, small = self.config.rank, min(linear.in_features, linear.out_features)
        if k > small:
            raise OneBitError(f"--rank {k} is larger than layer '{name}' allows "
                              f"({linear.out_features}x{linear.in_features}: at most {small})")

    def train_module(self, name: str, linear: nn.Linear) -> RankScaleLinearTrain:
        """The trainable (latent-weight) form, rank-k SVID-initialised."""
        self.check_layer(name, linear)
        return RankScaleLinearTrain.from_linear(linear, self.config.rank, self.config.init)

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        return self.train_module(name, linear).to_packed(concrete_scale_dtype(self.config.scale_dtype))

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        return RankScaleLinear(in_features, out_features, self.config.rank, bias,
                               concrete_scale_dtype(self.config.scale_dtype), dtype, device="meta")
