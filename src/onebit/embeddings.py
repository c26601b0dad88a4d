"""Quantized token embeddings and LM heads: the settings and the modules (quantized, or empty for loading).

The linear methods (the registry) never touch embeddings; this is a second, independent setting
(:class:`EmbedQuantConfig`) applied after them::

    onebit.quantize(model, onebit.OneBitConfig(), embed=onebit.EmbedQuantConfig("q1"))

The modules are built here; the swap is done by :func:`onebit.pipelines.embeddings.quantize_embeddings`
(quantizing) and :func:`onebit.surgery.prepare_empty_embeddings` (loading), through
:func:`onebit.surgery.set_submodule` like every other swap.

It replaces the input embedding by a :class:`~onebit.nn.quant_embedding.QuantEmbedding` and the
output projection by a :class:`~onebit.nn.quant_embedding.QuantLMHead` — **tied** to the
embedding's table when the model ties them (SmolLM2, stories3M: one table, stored once, used by
both), quantized the same way on its own when untied (unless ``head=False``).

What was done is written into the checkpoint's ``quantization_config`` under ``"embed"``::

    "embed": {"kind": "int4", "group_size": 32, "head": true,
              "modules": {"model.embed_tokens": {"role": "embedding", "shape": [V, D]},
                          "lm_head": {"role": "head", "shape": [V, D], "tied_to": "model.embed_tokens",
                                      "bias": false}}}

and such a checkpoint has ``format_version`` 2 (older onebit refuses it with a clear message;
checkpoints without quantized embeddings stay version 1).  The ledger counts these tensors as
``embedding`` / ``head`` with their real bits.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import EMBED_KINDS  # noqa: F401  (re-exported)
from .errors import CheckpointError, OneBitError
from .methods.blockquant import KINDS, check_kind

log = logging.getLogger("onebit")

#: the format version of a checkpoint holding quantized embeddings
EMBED_FORMAT_VERSION = 2


@dataclass
class EmbedQuantConfig:
    """How to store the token embedding (and an untied head).

    kind: ``none`` (keep the model dtype), ``int8`` / ``int4`` (llama.cpp's Q8_0 / Q4_0 rounding),
    ``int2`` (the Q4_0 rule with 2 bits; onebit only), ``q1`` (sign + mean |w| per block, Q1_0).
    group_size: weights per fp16 scale along a row (default 32; q1: 128).  head: also quantize an
    untied output projection (a tied one always follows the embedding).
    """

    kind: str = "none"
    group_size: int | None = None
    head: bool = True

    def resolved_group(self) -> int:
        return KINDS[self.kind][1] if self.group_size is None else self.group_size

    def validate(self) -> None:
        if self.kind not in EMBED_KINDS:
            raise OneBitError(f"unknown --embed-quant '{self.kind}'; choose one of {', '.join(EMBED_KINDS)}")
        if self.kind == "none":
            return
        try:
            check_kind(self.kind, self.resolved_group())
        except ValueError as e:
            raise OneBitError(f"--embed-group: {e}")

    @classmethod
    def coerce(cls, value: "EmbedQuantConfig | str | None") -> "EmbedQuantConfig":
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(kind=value)
        if not isinstance(value, cls):
            raise OneBitError(f"embed must be an EmbedQuantConfig or one of {', '.join(EMBED_KINDS)}, "
                              f"got {type(value).__name__}")
        return value


def _name_of(model: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((n for n, m in model.named_modules() if m is target), None)


def untie_mapping(model: nn.Module, names: set[str]) -> None:
    """Drop transformers' tied-weight entries that name a swapped module: the quantized head reads
    the embedding's table itself, so ``tie_weights()`` must not look for ``weight`` tensors there."""
    for prefix, sub in model.named_modules():
        keys = getattr(sub, "_tied_weights_keys", None)
        if not keys:
            continue
        pre = f"{prefix}." if prefix else ""

        def hit(k: str) -> bool:
            full = pre + k
            return any(full == n or full.startswith(n + ".") for n in names)

        sub._tied_weights_keys = {k: v for k, v in keys.items() if not (hit(k) or hit(v))}
        if hasattr(sub, "all_tied_weights_keys"):
            sub.all_tied_weights_keys = {k: v for k, v in sub.all_tied_weights_keys.items()
                                         if not (hit(k) or hit(v))}


def _is_tied(head: nn.Module, emb: nn.Embedding) -> bool:
    hw = getattr(head, "weight", None)
    if hw is None:
        return False
    if hw is emb.weight:
        return True
    return hw.device.type != "meta" and hw.data_ptr() == emb.weight.data_ptr() and hw.shape == emb.weight.shape


@torch.no_grad()
def quantized_embeddings(model: nn.Module, config: "EmbedQuantConfig | str | None"
                         ) -> tuple[dict | None, dict[str, nn.Module]]:
    """``(spec, {name: new module})``: the quantized input embedding (and head) that replace the
    model's, and the ``"embed"`` spec describing them; ``(None, {})`` for ``kind="none"``.  Nothing
    is swapped here: :func:`onebit.pipelines.embeddings.quantize_embeddings` does the swap."""
    from .nn.quant_embedding import QuantEmbedding, QuantLMHead  # the kernels: only when one is built

    config = EmbedQuantConfig.coerce(config)
    config.validate()
    if config.kind == "none":
        return None, {}
    group = config.resolved_group()
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if get_in is not None else None
    if not isinstance(emb, nn.Embedding):
        found = type(emb).__name__ if emb is not None else "none"
        raise OneBitError(f"model has no nn.Embedding input embedding to quantize (found {found})")
    emb_name = _name_of(model, emb)
    rows, cols = emb.weight.shape
    if config.group_size is None and group > cols:   # the default block is wider than a row
        group = cols
        try:
            check_kind(config.kind, group)
        except ValueError as e:
            raise OneBitError(f"cannot quantize rows of {cols} weights as {config.kind}: {e}")
    if group > cols:
        raise OneBitError(f"--embed-group {group} is larger than the embedding rows ({cols} weights)")
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if get_out is not None else None
    head_name = _name_of(model, head)
    tied = head is not None and _is_tied(head, emb)
    modules: dict[str, dict[str, Any]] = {emb_name: {"role": "embedding", "shape": [rows, cols]}}
    qemb = QuantEmbedding.from_embedding(emb, config.kind, group)
    new_head = None
    if head is not None and tied:
        if type(head) is not nn.Linear:
            raise OneBitError(f"the head '{head_name}' tied to the embedding is a {type(head).__name__}, "
                              "not a linear layer")
        new_head = QuantLMHead.tied_to(qemb, head.bias)
        modules[head_name] = {"role": "head", "shape": [rows, cols], "tied_to": emb_name,
                              "bias": head.bias is not None}
    elif head is not None and config.head and type(head) is nn.Linear:
        if group > head.in_features:
            raise OneBitError(f"--embed-group {group} is larger than the head rows ({head.in_features} weights)")
        new_head = QuantLMHead.from_linear(head, config.kind, group)
        modules[head_name] = {"role": "head", "shape": [head.out_features, head.in_features],
                              "bias": head.bias is not None}
    elif head is not None and config.head:
        log.info("head '%s' is a %s (quantized by the method or not a linear): left as it is",
                 head_name, type(head).__name__)
    new = {emb_name: qemb} if new_head is None else {emb_name: qemb, head_name: new_head}
    spec = {"kind": config.kind, "group_size": group, "head": bool(config.head), "modules": modules}
    return spec, new


def record_spec(model: nn.Module, spec: dict) -> None:
    """Write ``spec`` into the model's onebit ``quantization_config`` (if it has one) under
    ``"embed"``, raising its format version to :data:`EMBED_FORMAT_VERSION`."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(qc, dict):
        qc["embed"] = spec
        qc["format_version"] = max(int(qc.get("format_version", 1)), EMBED_FORMAT_VERSION)


def check_spec(spec: Any) -> dict:
    """The ``"embed"`` entry of a ``quantization_config``, validated (one-line CheckpointError)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("modules"), dict) or not spec["modules"]:
        raise CheckpointError("quantization_config 'embed' lists no modules")
    try:
        check_kind(spec.get("kind"), spec.get("group_size"))
    except ValueError as e:
        raise CheckpointError(f"quantization_config 'embed': {e}")
    for name, m in spec["modules"].items():
        ok = isinstance(m, dict) and m.get("role") in ("embedding", "head") \
            and isinstance(m.get("shape"), list) and len(m["shape"]) == 2 \
            and all(type(d) is int and d > 0 for d in m["shape"])
        if not ok or (m.get("tied_to") is not None and m["tied_to"] not in spec["modules"]):
            raise CheckpointError(f"quantization_config 'embed' has a malformed entry for '{name}'")
    return spec


@torch.no_grad()
def empty_embeddings(model: nn.Module, qc: dict) -> dict[str, nn.Module]:
    """``{name: empty quantized module}`` (meta device) for the modules a checkpoint's ``"embed"``
    spec names, tied heads reading their embedding's table; ``{}`` for checkpoints without it.
    Nothing is swapped here: :func:`onebit.surgery.prepare_empty_embeddings` does the swap."""
    from .nn.quant_embedding import QuantEmbedding, QuantLMHead  # the kernels: only when one is built

    spec = qc.get("embed")
    if spec is None:
        return {}
    spec = check_spec(spec)
    kind, group = spec["kind"], spec["group_size"]
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    mods = spec["modules"]
    built: dict[str, nn.Module] = {}
    for name, m in sorted(mods.items(), key=lambda kv: kv[1]["role"] != "embedding"):
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"quantization_config 'embed' names module '{name}', which the model does not have")
        rows, cols = m["shape"]
        if m["role"] == "embedding":
            if not isinstance(old, nn.Embedding) or tuple(old.weight.shape) != (rows, cols):
                raise CheckpointError(f"quantization_config 'embed': '{name}' is not a [{rows}, {cols}] embedding "
                                      "in this model")
            new = QuantEmbedding(rows, cols, kind, group, old.padding_idx, dtype=dtype, device="meta")
        else:
            if not hasattr(old, "in_features") or (old.out_features, old.in_features) != (rows, cols):
                raise CheckpointError(f"quantization_config 'embed': '{name}' is not a [{rows}, {cols}] head "
                                      "in this model")
            tied = m.get("tied_to")
            new = QuantLMHead(cols, rows, kind, group, bool(m.get("bias")), dtype, device="meta",
                              tied=tied is not None)
            if tied is not None:
                new.tie(built[tied])
        built[name] = new
    return built


def embed_dtype_names(qc: dict | None) -> set[str]:
    """Tensor-name prefixes of the quantized embedding modules (their fp16 scales say nothing of the
    model's dtype)."""
    spec = (qc or {}).get("embed") or {}
    return set((spec.get("modules") or {}).keys()) if isinstance(spec, dict) else set()


def describe(spec: dict | None) -> str:
    if not spec:
        return "embeddings: model dtype"
    mods = spec["modules"]
    parts = [f"{n} ({m['role']}{', tied to ' + m['tied_to'] if m.get('tied_to') else ''})" for n, m in mods.items()]
    return f"embeddings: {spec['kind']} groups of {spec['group_size']}: " + ", ".join(parts)


def fields() -> list[str]:
    return [f.name for f in dataclasses.fields(EmbedQuantConfig)]
