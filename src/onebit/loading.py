"""Loading a packed checkpoint: rebuild the model it describes (api layer).

:mod:`onebit.formats.checkpoint` reads the storage (safetensors tensors and headers, the
``quantization_config`` and its version); here the model is rebuilt from it: the architecture on
the meta device (:func:`empty_packed_model`), each quantized linear swapped for its method's empty
module and the quantized embeddings / head for theirs (:mod:`onebit.surgery`), then the tensors
assigned and checked.  :func:`validate_checkpoint` / :func:`checkpoint_ledger` do the same checks
from the headers alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .embeddings import embed_dtype_names
from .errors import CheckpointError, OneBitError
from .formats.sharded import SAFETENSORS_DTYPES
from .formats.checkpoint import load_state_dict_file, read_headers, read_quant_config, weight_files
from .formats.ledger import Ledger, ledger_from_specs
from .config import QuantConfig
from .registry import config_from_dict
from .rotation import install_online_like
from .surgery import empty_model, prepare_empty, prepare_empty_embeddings


def _read_configs(path) -> tuple[dict, "QuantConfig"]:
    """A checkpoint's ``quantization_config`` and the method's config built from it: the format
    version is checked here, once per load (by ``config_from_dict``)."""
    qc = read_quant_config(path, check_version=False)
    return qc, config_from_dict(qc)


def checkpoint_ledger(path: str | os.PathLike) -> Ledger:
    """Ledger of a packed checkpoint, read from its safetensors header(s) alone, after checking
    them against the model the checkpoint describes (:func:`validate_checkpoint`)."""
    qc, config = _read_configs(path)
    headers = read_headers(path)
    specs = {k: (shape, dtype) for k, (shape, dtype, _) in headers.items()}
    validate_checkpoint(path, qc, specs, config=config)
    return ledger_from_specs(specs, qc.get("modules", {}), qc.get("embed"))


#: the floating dtypes a model's own tensors can have (the packed codes are integers)
_TORCH_DTYPES = {k: SAFETENSORS_DTYPES[k] for k in ("F16", "BF16", "F32", "F64")}


def empty_packed_model(path: Path, qc: dict, dtype: torch.dtype, config=None) -> nn.Module:
    """The model a checkpoint describes, with no weights: the architecture on the meta device and
    each quantized linear replaced by its method's ``empty_module`` (also on the meta device)."""
    model = empty_model(path, dtype=dtype, buffers=True, drop_quantization_config=True)
    prepare_empty(model, qc, config)
    prepare_empty_embeddings(model, qc)
    return model


def _model_dtype(items, qc: dict) -> torch.dtype:
    """The model's float dtype from its tensors ``(name, dtype)``: an embedding's if it has one in a
    float dtype, else the first float tensor's; quantized embeddings (fp16 scales) do not count."""
    skip = embed_dtype_names(qc)
    items = [(k, d) for k, d in items if d is not None and k.rpartition(".")[0] not in skip]
    return next((d for k, d in items if "embed" in k), None) or next((d for _, d in items), torch.float32)


def _check_tensors(path: Path, shapes: dict[str, tuple[int, ...]], model: nn.Module) -> None:
    """Every tensor in the file is one the model has, with the shape the model expects."""
    expected = dict(model.state_dict())
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise CheckpointError(f"'{path}' holds tensor '{unexpected[0]}' that the model does not have")
    for k, shape in shapes.items():
        if tuple(expected[k].shape) != tuple(shape):
            raise CheckpointError(f"'{path}': tensor '{k}' has shape {list(shape)}, "
                                  f"model expects {list(expected[k].shape)}")


def validate_checkpoint(path: str | os.PathLike, qc: dict | None = None,
                        specs: dict[str, tuple[tuple[int, ...], str]] | None = None, config=None) -> None:
    """Check a checkpoint from its headers alone, as :func:`load_checkpoint` checks the tensors it
    reads: no tensor the model lacks, every shape the one the method's ``empty_module`` expects,
    no tensor missing; and the ``modules`` shapes in ``quantization_config`` those of the model."""
    path = Path(path)
    if qc is None:
        qc, config = _read_configs(path)
    if specs is None:
        specs = {k: (shape, dtype) for k, (shape, dtype, _) in read_headers(path).items()}
    dtype = _model_dtype([(k, _TORCH_DTYPES.get(d)) for k, (_, d) in specs.items()], qc)
    try:
        model = empty_packed_model(path, qc, dtype, config)
    except OneBitError as e:
        raise CheckpointError(f"'{path}': {e}")
    _check_tensors(path, {k: shape for k, (shape, _) in specs.items()}, model)
    # what loading must fill: every parameter / buffer left on the meta device (tied ones once)
    model.tie_weights()
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta" and n not in specs:
            raise CheckpointError(f"'{path}' is missing tensor '{n}'")
    for name, shape in qc["modules"].items():
        m = model.get_submodule(name)
        want = [getattr(m, "out_features", None), getattr(m, "in_features", None)]
        if None not in want and (not isinstance(shape, (list, tuple)) or list(shape) != want):
            raise CheckpointError(f"'{path}': quantization_config gives module '{name}' the shape {shape}, "
                                  f"the model's is {want}")


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild the packed model from a checkpoint directory (safetensors only, no code run)."""
    path = Path(path)
    qc, config = _read_configs(path)
    sd = {}
    for f in weight_files(path):
        sd.update(load_state_dict_file(f, device))
    dtype = _model_dtype([(k, t.dtype if t.is_floating_point() else None) for k, t in sd.items()], qc)
    model = empty_packed_model(path, qc, dtype, config)
    _check_tensors(path, {k: tuple(t.shape) for k, t in sd.items()}, model)
    model.load_state_dict(sd, strict=False, assign=True)
    model.tie_weights()
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers())
               if p.device.type == "meta"]
    if missing:
        raise CheckpointError(f"'{path}' is missing tensor '{missing[0]}'")
    model.config.quantization_config = qc
    install_online_like(model, qc)   # --rotate-online: down_proj's input rotated at run time
    model.eval()
    return model
