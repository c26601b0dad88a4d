"""LoRA adapters on frozen packed layers: ``y = base(x) + (x Aᵀ Bᵀ) · α/r``.

The packed modules of every method (``OneBitLinear``, ``QuantLinear``, ...) are not ``nn.Linear``,
so an adapter is not a wrapper class around them: it is a child module ``lora`` of the packed
module plus a forward hook that adds its output.  The packed module keeps its type and its tensor
names (``<name>.weight_packed`` ...), so everything that reads packed modules (kernels, export,
the ledger) sees them unchanged; the adapter's tensors are ``<name>.lora.A`` ``[r, in]`` and
``<name>.lora.B`` ``[out, r]``.

What is attached is described by a plain dict (stored as ``onebit_adapters`` in config.json)::

    {"kind": "lora", "rank": 8, "alpha": 16.0, "modules": {"model.layers.0.self_attn.q_proj": [out, in]}}

:func:`attach_adapters` rebuilds them from that dict (on the meta device while a checkpoint's
skeleton is built, filled by the loader like every other tensor).

Training needs gradients *through* the frozen packed layers (to the adapters below them), and
the packed ops have no autograd formula.  :func:`grad_path` gives a packed layer one: its
backward multiplies by the layer's dense equivalent ``W = (f(I) - f(0))ᵀ``, recomputed from the
packed form in each backward (no dense copy is kept), exact for layers linear in their input and
straight-through for those that quantize activations.  :func:`check_linear` refuses layers that
are not (OneBit's optional output LayerNorm).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, OneBitError

ADAPTER_KIND = "lora"


class LoRA(nn.Module):
    """The low-rank update ``x ↦ (x Aᵀ) Bᵀ · α/r``; B starts at zero, so it starts as a no-op."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.rank, self.alpha = int(rank), float(alpha)
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        if self.A.device.type != "meta":
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear (and peft) initialise A

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.to(self.A.dtype), self.A), self.B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``B A · α/r`` ``[out, in]``: what merging adds to a float weight."""
        return (self.B @ self.A) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def _lora_hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output + module.lora(args[0]).to(output.dtype)


def add_lora(module: nn.Module, rank: int, alpha: float, dtype: torch.dtype = torch.float32) -> LoRA:
    """Give ``module`` (a packed or plain linear layer) an adapter ``module.lora``."""
    if isinstance(getattr(module, "lora", None), LoRA):
        raise OneBitError(f"{type(module).__name__} already has a LoRA adapter")
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if not isinstance(n_in, int) or not isinstance(n_out, int):
        raise OneBitError(f"{type(module).__name__} has no in_features/out_features: not a linear layer")
    device = next((t.device for t in list(module.parameters()) + list(module.buffers())), None)
    module.add_module("lora", LoRA(n_in, n_out, rank, alpha, dtype, device))
    module.register_forward_hook(_lora_hook)
    return module.lora


def adapter_spec(rank: int, alpha: float, modules: dict[str, list[int]]) -> dict:
    return {"kind": ADAPTER_KIND, "rank": int(rank), "alpha": float(alpha),
            "modules": {k: [int(v[0]), int(v[1])] for k, v in modules.items()}}


def check_spec(spec) -> dict:
    """``spec`` (from config.json) checked; one-line :class:`CheckpointError` otherwise."""
    if not isinstance(spec, dict) or spec.get("kind") != ADAPTER_KIND:
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise CheckpointError(f"onebit_adapters in config.json: unknown adapter kind {kind!r} "
                              f"(this onebit knows '{ADAPTER_KIND}')")
    rank, alpha, mods = spec.get("rank"), spec.get("alpha"), spec.get("modules")
    if type(rank) is not int or rank < 1 or not isinstance(alpha, (int, float)) \
            or not isinstance(mods, dict) or not mods:
        raise CheckpointError("onebit_adapters in config.json needs an integer rank >= 1, a number alpha "
                              "and a non-empty 'modules' object")
    return spec


def attach_adapters(model: nn.Module, spec: dict) -> list[str]:
    """Rebuild the adapters ``spec`` describes (see the module docstring); return their names."""
    spec = check_spec(spec)
    for name, shape in spec["modules"].items():
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"onebit_adapters names module '{name}', which the model does not have")
        want = [getattr(mod, "out_features", None), getattr(mod, "in_features", None)]
        if list(shape) != want:
            raise CheckpointError(f"onebit_adapters gives module '{name}' the shape {shape}, the model's is {want}")
        add_lora(mod, spec["rank"], spec["alpha"])
    return list(spec["modules"])


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``name -> module`` of every module of ``model`` with an adapter."""
    return {n: m for n, m in model.named_modules() if isinstance(getattr(m, "lora", None), LoRA)}


@torch.no_grad()
def merge_lora(module: nn.Module) -> None:
    """Add ``B A · α/r`` into a float ``weight`` and drop the adapter.  Packed layers have no float
    weight (sign bits, integer codes): merging into them is not exact, so it is refused."""
    if type(module) is not nn.Linear:
        raise OneBitError(f"cannot merge a LoRA adapter into a {type(module).__name__}: its weight is packed "
                          "(adding B·A to it is not exact); keep the adapters (--no-merge)")
    module.weight += module.lora.delta_weight().to(module.weight.dtype)
    del module.lora
    for k, h in list(module._forward_hooks.items()):
        if h is _lora_hook:
            del module._forward_hooks[k]


# --------------------------------------------------------------------------- gradients through packed layers
@torch.no_grad()
def dense_weight(module: nn.Module, dtype: torch.dtype, device) -> torch.Tensor:
    """The dense ``[out, in]`` matrix of a layer linear in its input: ``(f(I) - f(0))ᵀ``."""
    n = module.in_features
    base = _base_forward(module, torch.zeros(1, n, dtype=dtype, device=device))
    return (_base_forward(module, torch.eye(n, dtype=dtype, device=device)) - base).T


def _base_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s own forward, without hooks (the adapter's, ours)."""
    return module.forward(x)


class _DenseGrad(torch.autograd.Function):
    """Returns ``y`` (the packed layer's output) with the gradient ``dx = dy W`` attached."""

    @staticmethod
    def forward(ctx, x, y, module):
        ctx.module, ctx.dtype = module, x.dtype
        return y.clone()

    @staticmethod
    def backward(ctx, gy):
        w = dense_weight(ctx.module, gy.dtype, gy.device)
        return (gy @ w).to(ctx.dtype), None, None


def _grad_hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    x = args[0]
    if not (torch.is_grad_enabled() and x.requires_grad):
        return output
    return _DenseGrad.apply(x, output.detach(), module)


def grad_path(module: nn.Module):
    """Let gradients flow through a frozen packed layer to its input (see the module docstring);
    returns the hook's handle (``.remove()`` it after training).  Runs before the adapter's hook."""
    return module.register_forward_hook(_grad_hook, prepend=True)


@torch.no_grad()
def check_linear(module: nn.Module, dtype: torch.dtype = torch.float32, tol: float = 0.1) -> float:
    """The relative error of ``f(a + b) = f(a) + f(b) - f(0)`` on random inputs; raises if it is
    over ``tol`` (the layer is not linear in its input, so :func:`grad_path` would be wrong)."""
    n = module.in_features
    device = next((t.device for t in module.buffers()), None)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4, n, generator=g).to(device, dtype) for _ in range(2))
    f = lambda x: _base_forward(module, x).float()  # noqa: E731
    lhs, rhs = f(a + b), f(a) + f(b) - f(torch.zeros_like(a))
    err = float((lhs - rhs).norm() / lhs.norm().clamp_min(1e-12))
    if err > tol:
        raise OneBitError(f"{type(module).__name__} is not linear in its input (relative error {err:.2f}, "
                          "e.g. OneBit's --layernorm): LoRA training cannot pass gradients through it")
    return err
