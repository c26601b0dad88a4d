"""``torch.library`` definitions of the packed ops.

``torch.ops.onebit.binary_linear(x, packed, g, h, in_features)`` computes
``((x ⊙ g) · sign(W)ᵀ) ⊙ h`` from 1-bit packed signs (layout in
``onebit.formats.packing``).  The default implementation is the pure-torch
reference; fast backends register device-specific kernels with
``torch.library.register_kernel("onebit::binary_linear", "cpu"|"cuda", fn)``.
``torch.ops.onebit.ternary_linear(x, packed, scale, in_features)`` computes
``(x · Qᵀ) ⊙ scale`` from 2-bit ternary codes (BitNet b1.58).
``torch.ops.onebit.quant_linear(x, packed, scale, zero, bits, group_size, in_features)``: n-bit
codes with per-tensor / channel / group scales (RTN, GPTQ, AWQ, the int8/4/2 LM head);
``torch.ops.onebit.block_sign_linear(x, packed, scales, group_size, in_features)``: sign bits with
one scale per block of a row (q1_0 linears, the q1 LM head);
``torch.ops.onebit.decode_attention(q, kt, v, scale)``: the attention of one query position over
a KV cache whose keys are stored transposed (onebit.generate's decode step).
A fake (meta) implementation makes each op traceable by ``torch.compile``.

The ops are defined with the low-level ``torch.library.Library`` (schema + a
``CompositeExplicitAutograd`` default) rather than ``torch.library.custom_op``, whose Python
wrapper cost more per call (~150 packed calls per decode step of a 1.1B model;
``python bench/dispatch.py`` times the paths).  The ops are inference ops (packed
weights are not trained) without an autograd formula: their ``Autograd`` kernel (a few µs, skipped
under ``torch.inference_mode``) gives an output computed from inputs that require grad a node
whose backward raises, instead of silently zero gradients (``onebit.nn.lora.grad_path`` replaces
that output for LoRA training).
"""
from __future__ import annotations

import torch

from .reference import (binary_linear_ref, block_sign_linear_ref, decode_attention_ref, quant_linear_ref,
                        ternary_linear_ref)

_LIB = torch.library.Library("onebit", "DEF")  # noqa: TOR901 (kept alive for the process)
_BELOW_AUTOGRAD = torch._C._after_autograd_keyset


class _NoGradient(torch.autograd.Function):
    """Passes ``out`` through; its backward raises (the op has no autograd formula)."""

    @staticmethod
    def forward(ctx, name: str, out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.name = name
        return out.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"onebit::{ctx.name} has no gradient (packed weights are frozen); "
                           "to train through a packed layer use onebit.nn.lora.grad_path")


def _autograd_kernel(name: str):
    op = None  # the OpOverload, looked up on the first call (the op is defined after this)

    def kernel(keyset, *args):
        nonlocal op
        if op is None:
            op = getattr(torch.ops.onebit, name).default
        with torch._C._AutoDispatchBelowAutograd():
            out = op.redispatch(keyset & _BELOW_AUTOGRAD, *args)
        if torch.is_grad_enabled():
            req = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if req:
                return _NoGradient.apply(name, out, *req)
        return out

    return kernel


def _define(name: str, schema: str, reference, per_code: int | None):
    """Define ``onebit::name`` with ``schema``, the pure-torch ``reference`` as its default on every
    device, and a fake implementation: output ``x.shape[:-1] + (packed.shape[0],)``, checking that
    ``x``'s last dim is ``in_features`` and that ``packed`` holds enough columns (``per_code``
    weights per byte; ``None``: ``8 // bits``, from the ``bits`` argument)."""
    _LIB.define(f"{name}{schema}")
    _LIB.impl(name, reference, "CompositeExplicitAutograd")
    _LIB.impl(name, _autograd_kernel(name), "Autograd", with_keyset=True)

    def fake(x, packed, *args):
        in_features = args[-1]
        per = per_code if per_code is not None else 8 / args[-3]  # quant_linear: (.., bits, group, in)
        torch._check(x.shape[-1] == in_features)
        torch._check(packed.shape[1] * per >= in_features)
        return x.new_empty(*x.shape[:-1], packed.shape[0])

    torch.library.register_fake(f"onebit::{name}", fake, lib=_LIB)


_define("binary_linear", "(Tensor x, Tensor packed, Tensor g, Tensor h, int in_features) -> Tensor",
        binary_linear_ref, 8)
_define("ternary_linear", "(Tensor x, Tensor packed, Tensor scale, int in_features) -> Tensor",
        ternary_linear_ref, 4)
# n-bit weight-only linear (RTN / GPTQ): y = x · ((q - zero) ⊙ scale)ᵀ; zero None = symmetric
_define("quant_linear", "(Tensor x, Tensor packed, Tensor scale, Tensor? zero, int bits, "
        "int group_size, int in_features) -> Tensor", quant_linear_ref, None)
# sign bits with one scale per block of group_size weights of a row: y = x · (sign ⊙ scale)ᵀ
_define("block_sign_linear", "(Tensor x, Tensor packed, Tensor scales, int group_size, "
        "int in_features) -> Tensor", block_sign_linear_ref, 8)
# attention of one query position (a decode step) over a KV cache with transposed keys:
# q [nh, D], kt [nkv, D, L], v [nkv, L, D] -> [nh, D]
_LIB.define("decode_attention(Tensor q, Tensor kt, Tensor v, float scale) -> Tensor")
_LIB.impl("decode_attention", decode_attention_ref, "CompositeExplicitAutograd")
_LIB.impl("decode_attention", _autograd_kernel("decode_attention"), "Autograd", with_keyset=True)
torch.library.register_fake("onebit::decode_attention", lambda q, kt, v, scale: q.new_empty(q.shape), lib=_LIB)

