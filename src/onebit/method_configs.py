"""The built-in methods' config dataclasses, torch-free (the method modules re-export them).

One dataclass per method, deriving from :class:`onebit.config.QuantConfig`.  Each field documents
itself in ``field(metadata={"help": ...})``; ``onebit quantize`` / ``onebit distill`` turn every
field of every registered config into a flag (``onebit.cli.method_flags``): ``--field-name``,
``--x/--no-x`` for a bool, ``choices`` from the metadata, extra spellings from ``aliases``.
A field with ``metadata={"cli": False}`` (filled by quantization, e.g. ``outliers``) gets none.

Living here rather than beside each handler keeps ``validate`` and the defaults importable without
torch; a method defined elsewhere can keep its config in its own module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import (ACT_BITS, ACT_MODES, CLIP_MODES, INIT_METHODS, OBSERVERS, RTN_BITS, SCALE_DTYPES,
                     QuantConfig, parse_dtype)
from .errors import OneBitError


def _concrete_scale_dtype(value: str) -> None:
    """'auto' (no concrete dtype) is refused; an unknown name too (``parse_dtype``)."""
    if parse_dtype(value) is None:
        raise OneBitError("scale_dtype must be a concrete dtype, not 'auto'")


def _calib_check(cfg) -> None:
    if cfg.calib_samples < 1 or cfg.calib_seqlen < 2:
        raise OneBitError("--calib-samples must be >= 1 and --calib-seqlen >= 2")


# ------------------------------------------------------------------- OneBit
@dataclass
class OneBitConfig(QuantConfig):
    """OneBit layer settings (the layer: sign(W) with value vectors g and h, SVID-initialised).

    layernorm is off by default because with SVID init alone it discards the output scale, and it
    did not help after distillation at the sizes we measured.  foldable: see
    onebit.methods.foldable.
    """

    method = "onebit"

    init: str = field(default="svd", metadata={
        "help": "SVID factorisation of |W|", "choices": INIT_METHODS})
    layernorm: bool = field(default=False, metadata={
        "help": "non-affine LayerNorm on each layer's output (docs/methods.md has the measurement "
        "behind the default)"})
    scale_dtype: str = field(default="float16", metadata={
        "help": "storage dtype of the scales (OneBit: the g/h value vectors)", "choices": SCALE_DTYPES})
    foldable: bool = field(default=False, metadata={
        "help": "tie the input scales (one g for q/k/v, one for gate/up, o/down's in v/up's h) so "
        "`onebit export` writes llama.cpp's Q1_0 exactly"})

    def validate(self) -> None:
        if self.foldable and self.layernorm:
            raise OneBitError("--foldable cannot be combined with --layernorm (the LayerNorm on a "
                              "layer's output does not fold into llama.cpp's Q1_0)")
        if self.init not in INIT_METHODS:
            raise OneBitError(f"unknown --init '{self.init}'; choose one of {', '.join(INIT_METHODS)}")
        _concrete_scale_dtype(self.scale_dtype)


# ------------------------------------------------------------------- activations
@dataclass
class ActQuantConfig(QuantConfig):
    """Fields shared by methods with optional activation quantization and calibration data
    (onebit.methods.actquant has the math)."""

    act_bits: int = field(default=0, metadata={
        "help": "activation bits (0 = float)", "choices": ACT_BITS})
    act_mode: str = field(default="dynamic", metadata={
        "help": "dynamic: absmax per token at run time; static: calibrated scale", "choices": ACT_MODES})
    act_observer: str = field(default="minmax", metadata={
        "help": "observer of static scales", "choices": OBSERVERS})
    act_percentile: float = field(default=99.9, metadata={"help": "percentile of the percentile observer"})
    calib_samples: int = field(default=128, metadata={"help": "calibration sequences"})
    calib_seqlen: int = field(default=256, metadata={"help": "calibration tokens per sequence"})
    calib_seed: int = field(default=0, metadata={"help": "calibration data seed"})
    calib_file: str | None = field(default=None, metadata={
        "help": "calibrate on this training text (.txt/.jsonl) instead of teacher-generated text; "
        "evaluation files are refused", "metavar": "FILE"})

    def validate(self) -> None:
        if self.act_bits not in ACT_BITS:
            raise OneBitError(f"--act-bits {self.act_bits} not supported; choose one of "
                              f"{', '.join(map(str, ACT_BITS))} (0 = no activation quantization)")
        if self.act_mode not in ACT_MODES:
            raise OneBitError(f"unknown --act-mode '{self.act_mode}'; choose one of {', '.join(ACT_MODES)}")
        if self.act_observer not in OBSERVERS:
            raise OneBitError(f"unknown --act-observer '{self.act_observer}'; choose one of "
                              f"{', '.join(OBSERVERS)}")
        if not 0 < self.act_percentile <= 100:
            raise OneBitError(f"--act-percentile must be in (0, 100], got {self.act_percentile}")
        _calib_check(self)

    @property
    def static_acts(self) -> bool:
        return self.act_bits > 0 and self.act_mode == "static"

    def needs_calibration(self) -> bool:
        return self.static_acts


# ------------------------------------------------------------------- BitNet
@dataclass
class BitNetConfig(ActQuantConfig):
    """BitNet W1A8: sign(W - mean W) with scale mean|W|; int8 per-token activations."""

    method = "bitnet"
    act_bits: int = 8


@dataclass
class TernaryConfig(ActQuantConfig):
    """BitNet b1.58 W1.58A8: absmean ternary weights (2-bit codes); int8 per-token activations."""

    method = "ternary"
    act_bits: int = 8


@dataclass
class OneBitW1A8Config(ActQuantConfig, OneBitConfig):
    """OneBit layer (SVID init) with int8 activations on ``X ⊙ g``."""

    method = "onebit-w1a8"
    act_bits: int = 8

    def validate(self) -> None:
        OneBitConfig.validate(self)
        ActQuantConfig.validate(self)


# ------------------------------------------------------------------- q1_0
@dataclass
class Q1Config(QuantConfig):
    """Sign + per-block scale: llama.cpp's Q1_0 with the defaults."""

    method = "q1_0"

    group_size: int = field(default=128, metadata={
        "help": "weights per scale along a row (q1_0: a multiple of 8; 128 = Q1_0)", "metavar": "N"})
    scale_dtype: str = field(default="float16", metadata={
        "help": "storage dtype of the scales (float16 = Q1_0)", "choices": SCALE_DTYPES})

    def validate(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 8 or self.group_size % 8:
            raise OneBitError(f"--group-size for q1_0 must be a positive multiple of 8, got {self.group_size}")
        _concrete_scale_dtype(self.scale_dtype)


# ------------------------------------------------------------------- RTN / GPTQ / AWQ
@dataclass
class RTNConfig(ActQuantConfig):
    """Round-to-nearest settings: uniform n-bit weights (docs/methods.md)."""

    method = "rtn"

    bits: int = field(default=4, metadata={"help": "weight bits, 2-8"})
    group_size: int = field(default=0, metadata={
        "help": "N > 0: one scale per N input columns; 0: per output channel; -1: one scale per tensor",
        "metavar": "N"})
    sym: bool = field(default=True, metadata={
        "help": "symmetric grid, no zero point / --no-sym (or --asym): asymmetric with a zero point"})
    clip: str = field(default="minmax", metadata={
        "help": "range per group: min-max or the MSE-optimal clip ratio", "choices": CLIP_MODES})
    scale_dtype: str = field(default="float16", metadata={
        "help": "storage dtype of the scales", "choices": SCALE_DTYPES})

    def validate(self) -> None:
        super().validate()
        if self.bits not in RTN_BITS:
            raise OneBitError(f"--bits {self.bits} not supported by {self.method}; choose one of "
                              f"{', '.join(map(str, RTN_BITS))}")
        if not isinstance(self.group_size, int) or self.group_size < -1:
            raise OneBitError(f"--group-size must be -1 (per tensor), 0 (per channel) or a positive "
                              f"group size, got {self.group_size}")
        if self.clip not in CLIP_MODES:
            raise OneBitError(f"unknown --clip '{self.clip}'; choose one of {', '.join(CLIP_MODES)}")
        if parse_dtype(self.scale_dtype) is None:
            raise OneBitError("scale_dtype must be a concrete dtype, not 'auto'")


@dataclass
class GPTQConfig(RTNConfig):
    """GPTQ settings: RTN's grid plus the error propagation's; calibration data from the
    ``calib_*`` fields (teacher-generated by default)."""

    method = "gptq"

    damp: float = field(default=0.01, metadata={"help": "Hessian damping (fraction of mean diag(H))"})
    block_size: int = field(default=128, metadata={"help": "lazy-update block of columns"})
    act_order: bool = field(default=False, metadata={
        "help": "quantize columns by decreasing Hessian diagonal"})
    static_groups: bool = field(default=False, metadata={
        "help": "group scales fixed from the unmodified weights"})

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.damp < 1:
            raise OneBitError(f"--damp must be in [0, 1), got {self.damp}")
        if self.block_size < 1:
            raise OneBitError(f"--block-size must be positive, got {self.block_size}")

    def needs_calibration(self) -> bool:
        return True


@dataclass
class AWQConfig(RTNConfig):
    """AWQ settings: RTN's grid plus the activation-aware scale search."""

    method = "awq"

    n_grid: int = field(default=20, metadata={
        "help": "alpha candidates 0, 1/n, ..., (n-1)/n", "aliases": ("--awq-grid",)})
    alpha: float | None = field(default=None, metadata={
        "help": "a fixed alpha in [0, 1] instead of the search (0 = rtn)", "aliases": ("--awq-alpha",)})
    fold: bool = field(default=True, metadata={
        "help": "fold 1/s into the op before a layer where possible (--no-fold: every layer keeps an "
        "explicit input scale)"})
    input_scaled: list[str] = field(default_factory=list, metadata={
        "cli": False, "help": "filled by quantization: the layers whose packed module stores input_scale"})

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.n_grid, int) or self.n_grid < 1:
            raise OneBitError(f"--awq-grid must be a positive integer, got {self.n_grid}")
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            raise OneBitError(f"--awq-alpha must be in [0, 1], got {self.alpha}")

    def needs_calibration(self) -> bool:
        return True


# ------------------------------------------------------------------- NF4 / LLM.int8()
@dataclass
class NF4Config(QuantConfig):
    """NF4 settings (QLoRA's 4-bit NormalFloat with double quantization of the absmaxes)."""

    method = "nf4"

    block_size: int = field(default=64, metadata={
        "help": "values per absmax (QLoRA's 64)", "aliases": ("--nf4-block-size",)})
    double_quant: bool = field(default=True, metadata={
        "help": "int8 absmaxes in blocks of --dq-block-size with an fp32 scale (--no-double-quant: fp32 "
        "absmaxes)"})
    dq_block_size: int = field(default=256, metadata={
        "help": "absmaxes per double-quantization block", "aliases": ("--nf4-dq-block-size",)})

    def validate(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise OneBitError(f"--nf4-block-size must be a positive integer, got {self.block_size}")
        if not isinstance(self.dq_block_size, int) or self.dq_block_size < 1:
            raise OneBitError(f"--nf4-dq-block-size must be a positive integer, got {self.dq_block_size}")


@dataclass
class LLMInt8Config(QuantConfig):
    """LLM.int8(): int8 weights and activations, outlier input features kept in fp16."""

    method = "llm-int8"

    threshold: float = field(default=6.0, metadata={
        "help": "input features with calibration max|x| above it stay fp16 (inf: none)",
        "aliases": ("--int8-threshold",)})
    calib_samples: int = field(default=128, metadata={"help": "calibration sequences"})
    calib_seqlen: int = field(default=256, metadata={"help": "calibration tokens per sequence"})
    calib_seed: int = field(default=0, metadata={"help": "calibration data seed"})
    calib_file: str | None = field(default=None, metadata={
        "help": "calibrate on this training text (.txt/.jsonl) instead of teacher-generated text; "
        "evaluation files are refused", "metavar": "FILE"})
    outliers: dict[str, int] = field(default_factory=dict, metadata={
        "cli": False, "help": "filled by quantization: outlier features per layer"})

    def validate(self) -> None:
        if not isinstance(self.threshold, (int, float)) or math.isnan(self.threshold) or self.threshold <= 0:
            raise OneBitError(f"--int8-threshold must be > 0 (inf: no outlier features), got {self.threshold}")
        _calib_check(self)

    def needs_calibration(self) -> bool:
        return True
