"""The student: the teacher with its linears in a method's trainable (fake-quant) form.

* :func:`student_from_teacher` — a copy of the teacher whose every linear that
  ``surgery.find_linears`` returns is replaced by ``handler.train_module(name,
  linear)``: any registered method with a trainable form (OneBit, BitNet,
  ternary, RTN as QAT, ...) trains through the same code.
* :func:`student_from_checkpoint` — a packed checkpoint whose modules are
  turned back into their trainable form with ``module.to_train()``.
* :func:`freeze` — only the trainable modules' parameters get gradients
  (embeddings, ``lm_head`` and norms stay frozen unless asked).
* :func:`pack_student` — ``.to_packed()`` per module, ready for
  ``formats.checkpoint.save_checkpoint``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import QuantConfig, parse_dtype
from ..errors import OneBitError
from ..api import quantize
from ..loading import load_checkpoint
from ..registry import config_from_dict, get_handler
from ..surgery import find_linears, set_submodule

#: config fields that must agree between teacher and student
ARCH_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "n_embd", "n_layer", "n_head")


def check_compatible(teacher: nn.Module, student: nn.Module, student_name: str = "student") -> None:
    """One-line error when the student is not the teacher's architecture / vocabulary."""
    tc, sc = teacher.config, student.config
    for key in ARCH_FIELDS:
        a, b = getattr(tc, key, None), getattr(sc, key, None)
        if a != b:
            what = "vocabulary" if key == "vocab_size" else "architecture"
            raise OneBitError(f"{what} mismatch between teacher and {student_name}: "
                              f"{key} = {a} (teacher) vs {b} ({student_name})")


def student_from_teacher(teacher: nn.Module, config: QuantConfig,
                         calib_ids: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """``(student, quantization_config)``: a deep copy of ``teacher`` with trainable quantized linears.

    A method that needs calibration (GPTQ, AWQ, SmoothQuant) starts from its calibrated result:
    a copy of the teacher is quantized with ``calib_ids`` and its packed modules are turned back
    into their trainable form (QAT from GPTQ's codes, not from round-to-nearest)."""
    config.validate()
    handler = get_handler(config)
    if handler.needs_calibration:
        return _calibrated_student(teacher, config, calib_ids)
    student = copy.deepcopy(teacher)
    targets = find_linears(student, config.skip)
    if not targets:
        raise OneBitError("model has no linear layers to quantize")
    try:
        mods = handler.train_modules(student, targets)
    except NotImplementedError:
        raise OneBitError(f"method '{config.method}' has no trainable form; it cannot be distilled")
    for name, mod in mods.items():
        set_submodule(student, name, mod)
    qc = config.to_dict()
    qc["modules"] = {name: [lin.out_features, lin.in_features] for name, lin in targets}
    return student, qc


def _calibrated_student(teacher: nn.Module, config: QuantConfig, calib_ids) -> tuple[nn.Module, dict]:
    if calib_ids is None:
        raise OneBitError(f"method '{config.method}' needs calibration data to start the student")
    model = quantize(copy.deepcopy(teacher), copy.deepcopy(config), calib_ids=calib_ids)
    return model, to_trainable(model, f"method '{config.method}'")


def student_from_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """``(student, quantization_config)`` from a packed checkpoint, modules in trainable form."""
    model = load_checkpoint(path)
    return model, to_trainable(model, f"'{path}'")


def to_trainable(model: nn.Module, what: str = "the model") -> dict:
    """Turn a packed model's quantized modules back into their trainable form (in place, ties
    restored); return its quantization config (cleared on the model)."""
    qc = dict(model.config.quantization_config)
    for name in qc["modules"]:
        mod = model.get_submodule(name)
        if not hasattr(mod, "to_train"):
            raise OneBitError(f"{what}: module '{name}' ({type(mod).__name__}) has no trainable form "
                              "(to_train); it cannot be distilled")
        set_submodule(model, name, mod.to_train())
    get_handler(config_from_dict(qc)).tie_trainable(
        model, {name: model.get_submodule(name) for name in qc["modules"]})
    model.config.quantization_config = None
    return qc


def freeze(student: nn.Module, names, train_norms: bool = False) -> list[str]:
    """Gradients only for the modules ``names`` (and norms if asked); return trainable param names."""
    for p in student.parameters():
        p.requires_grad_(False)
    for name in names:
        for p in student.get_submodule(name).parameters():
            p.requires_grad_(True)
    if train_norms:
        for mod in student.modules():
            if "norm" in type(mod).__name__.lower():
                for p in mod.parameters(recurse=False):
                    p.requires_grad_(True)
    return [n for n, p in student.named_parameters() if p.requires_grad]


def param_groups(student: nn.Module, lr: float, lr_vectors: float, weight_decay: float) -> list[dict]:
    """AdamW groups: matrices (latent weights) at ``lr`` with decay, vectors (g, h, bias) at ``lr_vectors``."""
    mats = [p for p in student.parameters() if p.requires_grad and p.dim() >= 2]
    vecs = [p for p in student.parameters() if p.requires_grad and p.dim() < 2]
    groups = []
    if mats:
        groups.append({"params": mats, "lr": lr, "weight_decay": weight_decay, "name": "matrices"})
    if vecs:
        groups.append({"params": vecs, "lr": lr_vectors, "weight_decay": 0.0, "name": "vectors"})
    if not groups:
        raise OneBitError("the student has no trainable parameters")
    return groups


def trained_modules(trainable) -> list[str]:
    """The modules that own trainable matrices (``name.weight``) in a list of trainable parameter names."""
    return sorted({n.rsplit(".", 1)[0] for n in trainable if n.endswith(".weight")})


@torch.no_grad()
def reset_latents(student: nn.Module, names) -> int:
    """Round-trip every trained module through its packed form: ``module.to_packed().to_train()``.

    For OneBit the latent weights become ``sign(W) ⊙ |h gᵀ|`` (g/h kept in
    fp32): the signs and the forward pass are unchanged, but every latent sits
    at the size of its scale again instead of hovering near zero, where it
    flips back and forth at each step.  A few hundred steps after the reset,
    at a lower lr and with the KL loss alone, brought a trained stories3M
    student from 2.47x to 2.09x the teacher's perplexity on held-out teacher
    text (``bench/results/sweep_stories3m/README.md``).  Returns the number
    of modules reset (those without ``to_train`` are left alone).
    """
    done = 0
    for name in names:
        mod = student.get_submodule(name)
        if not (hasattr(mod, "to_packed") and hasattr(mod, "weight")):
            continue
        packed = mod.to_packed(mod.weight.dtype)
        if not hasattr(packed, "to_train"):
            continue
        fresh = packed.to_train(mod.weight.dtype)
        for pn, p in fresh.named_parameters(recurse=False):  # in place: the optimiser keeps its tensors
            getattr(mod, pn).copy_(p)
        done += 1
    return done


@torch.no_grad()
def pack_student(student: nn.Module, qc: dict) -> nn.Module:
    """Replace every trained module by its packed form (in place) and set ``quantization_config``."""
    scale_dtype = parse_dtype(qc["scale_dtype"]) if isinstance(qc.get("scale_dtype"), str) else None
    for name in qc["modules"]:
        set_submodule(student, name, student.get_submodule(name).to_packed(scale_dtype))
    student.config.quantization_config = qc
    student.eval()
    return student
