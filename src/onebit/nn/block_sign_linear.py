"""Sign bits with one scale per block of a row: ``W ≈ sign(W) ⊙ s[row, col // block]``.

With ``group_size = 128`` and fp16 scales this is llama.cpp's Q1_0 exactly (1.125 bits per
weight); when ``in_features`` is not a multiple of the block the last block of a row is shorter.

* :class:`BlockSignLinearTrain`: latent fp weight (sign via straight-through estimator) and
  trainable scales ``[out, ceil(in / block)]``, initialised by each block's mean |w| (the
  scale that minimises the squared error for fixed signs);
* :class:`BlockSignLinear`: packed signs (``weight_packed``, onebit's bit order) and fp16
  ``scales``; the forward is ``torch.ops.onebit.block_sign_linear`` (no dense copy of the weight).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels  # noqa: F401  (registers torch.ops.onebit)
from ..formats.packing import pack_signs, packed_cols, unpack_signs
from .ste import sign_ste


def num_blocks(cols: int, block: int) -> int:
    return (cols + block - 1) // block


def scale_blocks(w: torch.Tensor, scales: torch.Tensor, block: int) -> torch.Tensor:
    """``w [out, cols]`` times its block scales ``[out, nb]`` (column ``j`` by block ``j // block``).

    The whole blocks as a product on ``[out, nb, block]``, the short last block (if any) apart,
    then concatenated.  torch 2.13's inductor (CPU) miscompiles the obvious forms when ``cols``
    is not a multiple of ``block`` (``scales.repeat_interleave(block, 1)[:, :cols]``, the
    expand/reshape/slice form, the padded product cut by a slice when a cast follows, the gather
    ``scales[:, arange(cols) // block]`` in backward): it reads the scales at wrong or
    out-of-bounds offsets, garbage or NaN, which is why q1_0 trained to NaN under ``--compile``
    on stories3M (rows of 192).  tests/methods/test_q1.py checks compiled against eager.
    """
    out, cols = w.shape
    nf = cols // block
    full = nf * block
    s = scales.to(w.dtype)
    parts = []
    if nf:
        parts.append((w[:, :full].reshape(out, nf, block) * s[:, :nf, None]).reshape(out, full))
    if full < cols:
        parts.append(w[:, full:] * s[:, nf:])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@torch.no_grad()
def block_absmean(w: torch.Tensor, block: int) -> torch.Tensor:
    """Mean |w| of every block of ``block`` weights along each row (the last block may be short)."""
    out, cols = w.shape
    nb = num_blocks(cols, block)
    a = F.pad(w.abs().float(), (0, nb * block - cols)).reshape(out, nb, block).sum(dim=2)
    counts = torch.full((nb,), float(block), device=w.device)
    counts[-1] = cols - (nb - 1) * block
    return a / counts


class BlockSignLinearTrain(nn.Module):
    #: see :func:`scale_blocks` for the torch.compile miscompilation this form avoids
    compile_safe = True

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.scales = nn.Parameter(torch.ones(out_features, num_blocks(in_features, group_size),
                                              dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int = 128) -> "BlockSignLinearTrain":
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, group_size, linear.bias is not None,
                dtype=w.dtype, device=w.device)
        m.weight.copy_(w)
        m.scales.copy_(block_absmean(w, group_size).to(w.dtype))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = scale_blocks(sign_ste(self.weight), self.scales, self.group_size)
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> "BlockSignLinear":
        """The packed module; ``scale_dtype``: its stored scales' dtype (None: float16)."""
        scale_dtype = scale_dtype or torch.float16
        m = BlockSignLinear(self.in_features, self.out_features, self.group_size, self.bias is not None,
                            scale_dtype, self.bias.dtype if self.bias is not None else torch.float32,
                            device=self.weight.device)
        m.weight_packed.copy_(pack_signs(self.weight))
        m.scales.copy_(self.scales.to(scale_dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class BlockSignLinear(nn.Module):
    """Packed form: ``weight_packed`` uint8 ``[out, ceil(in/8)]``, ``scales`` ``[out, ceil(in/block)]``."""

    def __init__(self, in_features: int, out_features: int, group_size: int = 128, bias: bool = False,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, 1), dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, num_blocks(in_features, group_size),
                                                  dtype=scale_dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return scale_blocks(unpack_signs(self.weight_packed, self.in_features, dtype), self.scales.to(dtype),
                            self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.onebit.block_sign_linear(x, self.weight_packed, self.scales, self.group_size,
                                               self.in_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    @torch.no_grad()
    def to_train(self, dtype: torch.dtype = torch.float32) -> BlockSignLinearTrain:
        m = BlockSignLinearTrain(self.in_features, self.out_features, self.group_size,
                                 self.bias is not None, dtype=dtype, device=self.weight_packed.device)
        m.weight.copy_(self.dense_weight(dtype))
        m.weight.masked_fill_(m.weight == 0, 1e-8)  # a zero scale keeps its sign (+)
        m.scales.copy_(self.scales.to(dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias.to(dtype))
        return m

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
