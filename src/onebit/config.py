"""Base configuration shared by every quantization method.

A method's config is a dataclass deriving from :class:`QuantConfig`.  It is
stored verbatim (``to_dict``) in the checkpoint's ``config.json`` under
``quantization_config`` together with the packed-format version, and read back
with :meth:`QuantConfig.from_dict`, which rejects unknown fields and formats
newer than this code understands.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import CheckpointError, OneBitError

#: Newest packed checkpoint layout this code reads and writes.  Bump it when the tensor names,
#: bit order or meaning of a field change.  A checkpoint carries the oldest version that describes
#: it: 1 (linears packed; embeddings, norms and head in the model dtype), or 2 when it also holds
#: quantized embeddings / head (``quantization_config["embed"]``, see ``onebit.embeddings``), so
#: onebit versions that cannot read those refuse them with a clear message.
FORMAT_VERSION = 2

#: the version of a checkpoint without quantized embeddings
BASE_FORMAT_VERSION = 1

#: The ``quant_method`` value written to ``config.json`` (transformers' key).
QUANT_METHOD = "onebit"

DEFAULT_SKIP = ("lm_head",)


@dataclass
class QuantConfig:
    """Fields every method shares.

    ``skip`` lists module-name suffixes/patterns that stay in full precision
    (embeddings are never ``nn.Linear`` so they are never touched).
    """

    method: ClassVar[str] = "base"

    skip: list[str] = field(default_factory=lambda: list(DEFAULT_SKIP), metadata={
        "help": "module name (or glob) to keep in full precision; repeatable (default: lm_head)",
        "metavar": "NAME"})
    #: rotate the residual stream by a randomized Hadamard before quantizing (``onebit.rotation``;
    #: folded into the weights, so loading and export need nothing); ``rotate_seed`` picks it
    rotate: bool = field(default=False, metadata={
        "help": "rotate the residual stream by a randomized Hadamard before quantizing (folded into "
        "the weights; onebit.rotation)"})
    rotate_seed: int = field(default=0, metadata={"help": "seed of the randomized Hadamard rotation"})
    #: with ``rotate``: also rotate each down_proj's input by a randomized Hadamard at run time
    #: (QuaRot's online rotation; not foldable, so such a checkpoint does not export to GGUF)
    rotate_online: bool = field(default=False, metadata={
        "help": "with --rotate: also rotate each MLP down_proj's input by a randomized Hadamard at run "
        "time (QuaRot's online rotation; the checkpoint does not export to GGUF)"})

    def __post_init__(self) -> None:
        if self.rotate_online and not self.rotate:
            raise OneBitError("--rotate-online (rotate_online) needs --rotate (rotate=True)")

    def validate(self) -> None:
        """Raise :class:`OneBitError` for settings that cannot work."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d.get("rotate"):  # unrotated: the dict older onebit versions read
            d.pop("rotate", None)
            d.pop("rotate_seed", None)
        if not d.get("rotate_online"):
            d.pop("rotate_online", None)
        return {"quant_method": QUANT_METHOD, "format_version": BASE_FORMAT_VERSION,
                "method": self.method, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        d = dict(d)
        version = d.pop("format_version", None)
        check_format_version(version)
        for k in ("quant_method", "method", "modules", "embed"):
            d.pop(k, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CheckpointError(
                f"quantization_config for method '{cls.method}' has unknown field(s) {unknown}")
        return cls(**d)


def check_format_version(version: Any) -> None:
    if not isinstance(version, int):
        raise CheckpointError(f"quantization_config has no integer format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is newer than this onebit understands "
            f"({FORMAT_VERSION}); upgrade onebit")
    if version < 1:
        raise CheckpointError(f"invalid checkpoint format version {version}")


def parse_dtype(name: str | None):
    """Map a user string ('float16', 'fp16', 'bf16', 'float32', 'auto') to a torch dtype or None."""
    import torch

    if name is None or name == "auto":
        return None
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
    if name not in table:
        raise OneBitError(f"unknown dtype '{name}'; choose one of auto, float32, float16, bfloat16")
    return table[name]


#: choices of the method config fields (torch-free, so the CLI parser can offer them cheaply)
CLIP_MODES = ("minmax", "mse")
ACT_MODES = ("dynamic", "static")
OBSERVERS = ("minmax", "ema", "percentile")
ACT_BITS = (0, 2, 3, 4, 5, 6, 7, 8)
EMBED_KINDS = ("none", "int8", "int4", "int2", "q1")  # onebit.embeddings.EmbedQuantConfig.kind
INIT_METHODS = ("svd", "nmf")  # onebit.methods.svid.INIT_METHODS
RTN_BITS = (2, 3, 4, 5, 6, 7, 8)  # onebit.methods.quant.RTN_BITS
SCALE_DTYPES = ("float16", "bfloat16", "float32")  # storage dtypes a method's scale_dtype may name


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")
