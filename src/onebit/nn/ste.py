"""Straight-through estimators.

``sign_ste``: forward ``sign(w)`` with ``sign(0) = +1`` (the packing
convention); backward passes the gradient through unchanged (identity STE).
``clip`` > 0 gives the clipped variant (gradient zeroed where ``|w| > clip``,
as in BinaryConnect/BNN); OneBit's latent weights start at the fp weights'
scale (|w| ≪ 1), where both variants coincide, so identity is the default.
"""
from __future__ import annotations

import torch


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, clip: float):
        ctx.clip = clip
        if clip > 0:
            ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip > 0:
            (w,) = ctx.saved_tensors
            grad = grad * (w.abs() <= ctx.clip).to(grad.dtype)
        return grad, None


def sign_ste(w: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
    """``sign(w)`` forward, straight-through gradient backward."""
    return _SignSTE.apply(w, clip)
