"""``onebit-mos``: mixture of scales (BinaryMoS, Jo et al. 2024, arXiv 2406.12311).

OneBit's layer with ``k`` scale experts for ``g`` (k × in) and ``h`` (k × out) and a per-token
router ``softmax(x W_r)`` (``W_r``: in × k) mixing them.  Initialised from SVID: every expert =
the SVID ``g``/``h`` times ``1 + init_noise·ε`` (ε zero-mean across experts, so the start equals
OneBit-SVID), router zero.  Trained by the same distillation as OneBit
(``onebit distill TEACHER OUT --method onebit-mos``).  Module: :mod:`onebit.nn.mos_linear`; math:
:mod:`onebit.methods.multiscale`.  Bits per weight with fp16 tensors:
``(out·⌈in/8⌉·8 + 16·k·(in + out) + 16·k·in) / (out·in)``.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import OneBitError
from ..nn.mos_linear import MoSLinear, MoSLinearTrain
from ..registry import MethodHandler, register_method
from .common import check_finite_weight, concrete_scale_dtype
from .rank import check_count
from .svid import INIT_METHODS


@dataclass
class MoSConfig(QuantConfig):
    """Mixture of scales.

    experts: scale experts k per layer (the paper uses 4); 1 is OneBit (+ an unused router).
    init: SVID of |W| the experts start from ('svd' or 'nmf').
    init_noise: relative std of the zero-mean noise on the experts, so they can diverge in training.
    init_seed: seed of that noise (per layer: mixed with the layer's name).
    scale_dtype: storage dtype of the experts and the router ('float16').
    """

    method = "onebit-mos"
    #: ``onebit compare`` spec: ``onebit-mos8`` sets ``experts = 8``
    spec_number = "experts"

    experts: int = field(default=4, metadata={"help": "scale experts k per layer (the paper: 4); 1 = OneBit"})
    init: str = field(default="svd", metadata={"help": "SVID of |W| the experts start from: svd or nmf"})
    init_noise: float = field(default=0.01, metadata={"help": "relative std of the zero-mean noise on "
                                                              "the initial experts (so they can diverge)"})
    init_seed: int = field(default=0, metadata={"help": "seed of the initial expert noise (mixed with "
                                                        "each layer's name)"})
    scale_dtype: str = field(default="float16", metadata={"help": "storage dtype of the experts and "
                                                                  "the router"})

    def validate(self) -> None:
        check_count(self.experts, "--experts")
        if self.init not in INIT_METHODS:
            raise OneBitError(f"unknown --init '{self.init}'; choose one of {', '.join(INIT_METHODS)}")
        if (not isinstance(self.init_noise, (int, float)) or isinstance(self.init_noise, bool)
                or not math.isfinite(self.init_noise) or self.init_noise < 0):
            raise OneBitError(f"--init-noise must be a finite number >= 0, got {self.init_noise!r}")
        if not isinstance(self.init_seed, int) or isinstance(self.init_seed, bool):
            raise OneBitError(f"--init-seed must be an integer, got {self.init_seed!r}")
        concrete_scale_dtype(self.scale_dtype)


@register_method(MoSConfig)
class MoSHandler(MethodHandler):
    config: MoSConfig

    def train_module(self, name: str, linear: nn.Linear) -> MoSLinearTrain:
        """The trainable (latent-weight) form: SVID experts (+ noise), zero router."""
        check_finite_weight(name, linear)
        seed = (self.config.init_seed + zlib.crc32(name.encode())) % 2**63
        return MoSLinearTrain.from_linear(linear, self.config.experts, self.config.init,
                                          float(self.config.init_noise), seed)

    def quantize_linear(self, name: str, linear: nn.Linear, **kwargs) -> nn.Module:
        return self.train_module(name, linear).to_packed(concrete_scale_dtype(self.config.scale_dtype))

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        return MoSLinear(in_features, out_features, self.config.experts, bias,
                         concrete_scale_dtype(self.config.scale_dtype), dtype, device="meta")
