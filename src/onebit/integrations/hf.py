"""Hugging Face integration: ``from_pretrained`` / ``save_pretrained`` of packed checkpoints.

``import onebit`` calls :func:`register`, which adds the ``onebit`` quantization
config and quantizer to transformers through its public registration hooks
(``register_quantization_config`` / ``register_quantizer``; nothing in
transformers is patched).  Then::

    import onebit
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("out/s3m-1bit")   # packed OneBitLinear layers
    model.save_pretrained("out/copy")                               # same checkpoint layout

How it works: transformers builds the model skeleton on the meta device, then
calls the quantizer's ``_process_model_before_weight_loading``, which swaps the
linears named in ``quantization_config["modules"]`` for the method's empty
packed modules (:func:`onebit.surgery.prepare_empty`, i.e. the registry's
``empty_module``), after checking every weights file's safetensors header
against those modules (so a truncated file, a header that lies or a missing
packed tensor is a one-line :class:`~onebit.errors.CheckpointError`, not a
half-initialised model).  transformers then fills the buffers from the
safetensors files.  Only safetensors are accepted: nothing in a checkpoint is
unpickled or executed.

Supported transformers: major version :data:`SUPPORTED_MAJOR` (5.x).  Other
majors are refused with a clear error when a onebit checkpoint is loaded.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, OneBitError, first_line

log = logging.getLogger("onebit")

#: transformers major version this integration is written against
SUPPORTED_MAJOR = 5

_registered = False


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def check_transformers_version() -> None:
    import transformers

    if transformers_major() != SUPPORTED_MAJOR:
        raise OneBitError(f"onebit's Hugging Face integration supports transformers {SUPPORTED_MAJOR}.x, "
                          f"found {transformers.__version__}; install 'transformers>={SUPPORTED_MAJOR},"
                          f"<{SUPPORTED_MAJOR + 1}'")


def _quantized_linear_specs(model, qc: dict) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``tensor name -> (shape, dtype)`` of every tensor the packed modules expect."""
    out = {}
    embed = (qc.get("embed") or {}).get("modules") or {}
    for name in list(qc["modules"]) + list(embed):
        mod = model.get_submodule(name)
        for k, t in mod.state_dict().items():
            out[f"{name}.{k}"] = (tuple(t.shape), t.dtype)
    return out


def check_weight_files(files: list[str], expected: dict) -> None:
    """Validate every file's header; every expected packed tensor present with its shape."""
    from ..formats.checkpoint import read_safetensors_header

    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in files:
        if not str(f).endswith(".safetensors"):
            raise CheckpointError(f"'{f}' is not a safetensors file; onebit loads safetensors only "
                                  "(no pickle)")
        _, header = read_safetensors_header(f)
        for k, spec in header.items():
            if k != "__metadata__":
                found[k] = (tuple(spec["shape"]), f)
    for name, (shape, _) in expected.items():
        if name not in found:
            raise CheckpointError(f"checkpoint is missing tensor '{name}'")
        if found[name][0] != shape:
            raise CheckpointError(f"'{found[name][1]}': tensor '{name}' has shape {list(found[name][0])}, "
                                  f"model expects {list(shape)}")


def _skip_parent_inits(model, names) -> None:
    """Model-specific weight inits may reach into a swapped child (GPT-2 re-inits
    ``attn.c_proj.weight`` from the attention module); mark parents that own no
    tensors themselves as initialised so transformers skips them.  The packed
    children are loaded from the checkpoint, the other children keep their own init."""
    for name in names:
        parent = model.get_submodule(name.rpartition(".")[0])
        if not any(True for _ in parent.parameters(recurse=False)) \
                and not any(True for _ in parent.buffers(recurse=False)):
            parent._is_hf_initialized = True


def register() -> None:
    """Register the ``onebit`` config and quantizer with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    from ..config import QUANT_METHOD

    class OneBitQuantizationConfig(QuantizationConfigMixin):
        """transformers' view of a onebit ``quantization_config``: the checkpoint's dict, validated.

        ``to_dict()`` returns that dict unchanged, so ``save_pretrained``
        writes the same ``quantization_config`` it read.
        """

        def __init__(self, **kwargs):
            from ..registry import config_from_dict

            check_transformers_version()
            qc = dict(kwargs)
            qc.setdefault("quant_method", QUANT_METHOD)
            if qc["quant_method"] != QUANT_METHOD:
                raise CheckpointError(f"quantization_config is for '{qc['quant_method']}', not onebit")
            # future format version, unknown method or field -> CheckpointError; built once, reused
            self.__dict__["_config"] = config_from_dict(qc)
            if not isinstance(qc.get("modules"), dict) or not qc["modules"]:
                raise CheckpointError("quantization_config lists no quantized modules")
            self.__dict__["_qc"] = qc
            self.quant_method = QUANT_METHOD

        def to_dict(self) -> dict[str, Any]:
            return copy.deepcopy(self.__dict__["_qc"])

        def __iter__(self):
            yield from self.to_dict().items()

        def to_diff_dict(self) -> dict[str, Any]:
            return self.to_dict()

        def update(self, **kwargs):
            return kwargs  # loading attributes do not change a packed checkpoint

        def __getattr__(self, key):  # fields of the dict read as attributes (e.g. .method)
            qc = self.__dict__.get("_qc", {})
            if key in qc:
                return qc[key]
            raise AttributeError(key)

    class OneBitHfQuantizer(HfQuantizer):
        """Loads packed onebit checkpoints (quantize with ``onebit quantize`` / ``onebit.quantize``)."""

        requires_calibration = True  # i.e. only pre-quantized checkpoints; quantizing is onebit's job

        def validate_environment(self, *args, **kwargs):
            check_transformers_version()
            device_map = kwargs.get("device_map")
            if isinstance(device_map, dict) and "disk" in device_map.values():
                raise OneBitError("onebit checkpoints cannot be offloaded to disk")

        def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
            from ..surgery import prepare_empty_embeddings
            from ..surgery import prepare_empty

            qc = self.quantization_config.to_dict()
            prepare_empty(model, qc, self.quantization_config.__dict__.get("_config"))
            prepare_empty_embeddings(model, qc)   # quantized embeddings / head (format version 2)
            _skip_parent_inits(model, qc["modules"])
            if checkpoint_files:
                check_weight_files(list(checkpoint_files), _quantized_linear_specs(model, qc))
            return model

        def _process_model_after_weight_loading(self, model, **kwargs):
            # onebit's own code reads the plain dict (as written by onebit.quantize)
            model.config.quantization_config = self.quantization_config.to_dict()
            from ..rotation import install_online_like

            install_online_like(model, model.config.quantization_config)  # --rotate-online (run time)
            return model

        def is_serializable(self):
            return True

        @property
        def is_trainable(self) -> bool:
            return False

    register_quantization_config(QUANT_METHOD)(OneBitQuantizationConfig)
    register_quantizer(QUANT_METHOD)(OneBitHfQuantizer)
    globals()["OneBitQuantizationConfig"] = OneBitQuantizationConfig
    globals()["OneBitHfQuantizer"] = OneBitHfQuantizer
    _registered = True


def from_pretrained(path: str | Path, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` of a packed checkpoint, errors as one line."""
    from transformers import AutoModelForCausalLM

    register()
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except OneBitError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = first_line(e)
        raise CheckpointError(f"cannot load '{path}': {first}")
