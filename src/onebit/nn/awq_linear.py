"""AWQ's packed linear for a layer whose per-input-channel scale could not be folded into the op
before it: :class:`~onebit.nn.quant_linear.QuantLinear` plus one stored tensor.

* ``input_scale`` fp16 ``[in]``: AWQ's ``s``; the weight was quantized as ``W ⊙ s`` (columns), so
  the forward is ``Q(W ⊙ s) · (x / s)``.

Every other tensor, and the bit ledger's view of it, is :class:`QuantLinear`'s.  Layers whose
scale was folded (into an RMSNorm weight or the rows of the linear before them) are plain
``QuantLinear`` modules.
"""
from __future__ import annotations

import torch

from .quant_linear import QuantLinear


class AWQLinear(QuantLinear):
    """``QuantLinear`` with an explicit per-input-channel scale: ``y = Q(W ⊙ s)(x / s) + b``."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = 0,
                 sym: bool = True, bias: bool = False, act_bits: int = 0, act_static: bool = False,
                 scale_dtype: torch.dtype = torch.float16, bias_dtype: torch.dtype = torch.float32,
                 device=None):
        super().__init__(in_features, out_features, bits, group_size, sym, bias, act_bits, act_static,
                         scale_dtype, bias_dtype, device)
        self.register_buffer("input_scale", torch.ones(in_features, dtype=torch.float16, device=device))

    @classmethod
    @torch.no_grad()
    def from_quant_linear(cls, q: QuantLinear, input_scale: torch.Tensor) -> "AWQLinear":
        b = q.bias
        m = cls(q.in_features, q.out_features, q.bits, q.group_size, q.sym, b is not None, q.act_bits,
                q.act_scale is not None, q.scale.dtype,
                bias_dtype=b.dtype if b is not None else torch.float32, device=q.weight_packed.device)
        m.load_state_dict({**q.state_dict(), "input_scale": input_scale.to(torch.float16)})
        return m

    def act_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor activation quantization sees: ``x / s``."""
        return x / self.input_scale.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x / self.input_scale.to(x.dtype))

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective weight ``Q(W ⊙ s) / s`` (``y = x · dense_weightᵀ + b``)."""
        return super().dense_weight(dtype) / self.input_scale.to(dtype)

    def to_train(self, dtype: torch.dtype = torch.float32):
        raise NotImplementedError("AWQLinear with an explicit input scale has no trainable form")
