"""LLM.int8() (Dettmers et al. 2022) math: pure functions on tensors.

* :func:`int8_rows`: weight rows ``q = round(w / s)``, ``s = max|w_row| / 127`` (vector-wise).
* :func:`int8_tokens`: activations per token, the same absmax rule over the last dimension.
* :func:`outlier_columns`: the input features whose calibration ``max|x|`` exceeds ``threshold``
  (6.0 in the paper); ``inf`` gives none (plain W8A8).
* :func:`llm_int8_linear`: the mixed-precision decomposition
  ``y = deq(int8(x_R)) · deq(W_R)ᵀ + x_O · W_Oᵀ`` with ``R`` the regular and ``O`` the outlier
  columns: the regular part in int8 × int8 (reference arithmetic in float: an int8 GEMM is a
  backend's business), the outlier part in fp16.
"""
from __future__ import annotations

import torch

QMAX = 127


def int8_rows(w: torch.Tensor, scale_dtype: torch.dtype = torch.float16):
    """``(q int8 [out, in], s [out] in scale_dtype)`` with ``w ≈ q · s`` per row."""
    s = (w.detach().float().abs().amax(1) / QMAX).clamp_min(6.2e-5).to(scale_dtype)
    q = torch.clamp(torch.round(w.float() / s.float()[:, None]), -QMAX, QMAX).to(torch.int8)
    return q, s


def int8_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x`` fake-quantized to int8 per token (absmax over the last dim), in ``x``'s dtype."""
    xf = x.float()
    s = (xf.abs().amax(-1, keepdim=True) / QMAX).clamp_min(1e-12)
    return (torch.clamp(torch.round(xf / s), -QMAX, QMAX) * s).to(x.dtype)


def outlier_columns(x_absmax: torch.Tensor, threshold: float) -> torch.Tensor:
    """int64 indices (ascending) of the input features with ``max|x| > threshold``."""
    return torch.nonzero(x_absmax > threshold).reshape(-1)


def regular_columns(in_features: int, outliers: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(in_features, dtype=torch.bool, device=outliers.device)
    keep[outliers.long()] = False
    return torch.nonzero(keep).reshape(-1)


def llm_int8_linear(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, outliers: torch.Tensor | None = None,
                    w_out: torch.Tensor | None = None) -> torch.Tensor:
    """``y`` of the decomposition: ``q``/``s`` the int8 rows over the regular columns, ``w_out``
    ``[out, k]`` the fp16 weights of the ``k`` outlier columns ``outliers`` (None: no outliers)."""
    w = q.to(x.dtype) * s.to(x.dtype)[:, None]
    if outliers is None or outliers.numel() == 0:
        return torch.nn.functional.linear(int8_tokens(x), w)
    idx = outliers.long()
    reg = regular_columns(x.shape[-1], idx)
    y = torch.nn.functional.linear(int8_tokens(x[..., reg]), w)
    return y + torch.nn.functional.linear(x[..., idx], w_out.to(x.dtype))
