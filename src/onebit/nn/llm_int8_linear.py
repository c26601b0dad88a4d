"""LLM.int8() packed linear; math in :mod:`onebit.methods.int8quant`.

Stored tensors, all under the module's prefix (so the ledger counts them):

* ``weight_int8`` int8 ``[out, in - k]``: the regular columns, rows quantized by absmax;
* ``weight_scale`` fp16 ``[out]``: one scale per row (over the regular columns);
* with ``k > 0`` outlier input features: ``outlier_idx`` int32 ``[k]`` and ``weight_outlier`` fp16
  ``[out, k]`` (those columns of the weight, unquantized);
* ``bias`` if the original linear had one.

Forward: per-token int8 activations on the regular features times the int8 weight, plus the
outlier features times their fp16 weights (:func:`~onebit.methods.int8quant.llm_int8_linear`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..methods.int8quant import int8_rows, llm_int8_linear, regular_columns


class LLMInt8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, n_outliers: int = 0, bias: bool = False,
                 bias_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if not 0 <= n_outliers <= in_features:
            raise ValueError(f"n_outliers must be in [0, {in_features}], got {n_outliers}")
        self.in_features, self.out_features, self.n_outliers = in_features, out_features, n_outliers
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features - n_outliers,
                                                        dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float16, device=device))
        if n_outliers:
            self.register_buffer("outlier_idx", torch.zeros(n_outliers, dtype=torch.int32, device=device))
            self.register_buffer("weight_outlier", torch.zeros(out_features, n_outliers,
                                                               dtype=torch.float16, device=device))
        else:
            self.outlier_idx = self.weight_outlier = None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, outliers: torch.Tensor) -> "LLMInt8Linear":
        w = linear.weight.detach()
        b = linear.bias
        idx = outliers.long().sort().values.to(w.device)
        m = cls(linear.in_features, linear.out_features, idx.numel(), b is not None,
                bias_dtype=b.dtype if b is not None else torch.float32, device=w.device)
        reg = regular_columns(linear.in_features, idx)
        q, s = int8_rows(w[:, reg])
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(s)
        if idx.numel():
            m.outlier_idx.copy_(idx.to(torch.int32))
            m.weight_outlier.copy_(w[:, idx].to(torch.float16))
        if b is not None:
            m.bias.copy_(b)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = llm_int8_linear(x, self.weight_int8, self.weight_scale, self.outlier_idx, self.weight_outlier)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"n_outliers={self.n_outliers}, bias={self.bias is not None}")
