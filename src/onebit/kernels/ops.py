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
one scale per block of a row (q1_0 linears, the q1 LM head).
A fake (meta) implementation makes the op traceable by ``torch.compile``.
"""
from __future__ import annotations

import torch

from .reference import binary_linear_ref, block_sign_linear_ref, quant_linear_ref, ternary_linear_ref


@torch.library.custom_op("onebit::binary_linear", mutates_args=())
def binary_linear(x: torch.Tensor, packed: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
                  in_features: int) -> torch.Tensor:
    return binary_linear_ref(x, packed, g, h, in_features)


@binary_linear.register_fake
def _(x, packed, g, h, in_features):
    torch._check(x.shape[-1] == in_features)
    torch._check(packed.shape[1] * 8 >= in_features)
    return x.new_empty(*x.shape[:-1], packed.shape[0])


@torch.library.custom_op("onebit::ternary_linear", mutates_args=())
def ternary_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                   in_features: int) -> torch.Tensor:
    return ternary_linear_ref(x, packed, scale, in_features)


@ternary_linear.register_fake
def _(x, packed, scale, in_features):
    torch._check(x.shape[-1] == in_features)
    torch._check(packed.shape[1] * 4 >= in_features)
    return x.new_empty(*x.shape[:-1], packed.shape[0])


# n-bit weight-only linear (RTN / GPTQ): y = x · ((q - zero) ⊙ scale)ᵀ; zero None = symmetric
@torch.library.custom_op("onebit::quant_linear", mutates_args=())
def quant_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                 bits: int, group_size: int, in_features: int) -> torch.Tensor:
    return quant_linear_ref(x, packed, scale, zero, bits, group_size, in_features)


@quant_linear.register_fake
def _(x, packed, scale, zero, bits, group_size, in_features):
    torch._check(x.shape[-1] == in_features)
    torch._check(packed.shape[1] * 8 >= in_features * bits)
    return x.new_empty(*x.shape[:-1], packed.shape[0])


# sign bits with one scale per block of group_size weights of a row: y = x · (sign ⊙ scale)ᵀ
@torch.library.custom_op("onebit::block_sign_linear", mutates_args=())
def block_sign_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int,
                      in_features: int) -> torch.Tensor:
    return block_sign_linear_ref(x, packed, scales, group_size, in_features)


@block_sign_linear.register_fake
def _(x, packed, scales, group_size, in_features):
    torch._check(x.shape[-1] == in_features)
    torch._check(packed.shape[1] * 8 >= in_features)
    return x.new_empty(*x.shape[:-1], packed.shape[0])
