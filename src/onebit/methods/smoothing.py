"""SmoothQuant (Xiao et al. 2022, arXiv 2211.10438) math: pure functions on tensors.

A linear layer's output does not change when its input is divided per channel and its weight
columns multiplied by the same factors: ``y = X Wᵀ = (X diag(s)⁻¹)(W diag(s))ᵀ``.  SmoothQuant picks

    s_j = max|X_j|^α / max|W_:,j|^(1-α)

(``max|X_j|`` over calibration tokens, ``max|W_:,j|`` over the output rows of every layer reading
``X``), which moves the activation outliers into the weights: ``α = 1`` makes every smoothed
activation channel's max 1 (all the difficulty in the weights), ``α = 0`` makes every smoothed
weight column's max 1 (all of it in the activations; note: that is *not* ``s = 1``, no smoothing —
``SmoothQuantConfig(smooth=False)`` is), ``α = 0.5`` splits it (the paper's default).

* :func:`smooth_scales`: ``s`` from the two per-channel maxima (both clamped at :data:`MIN_SCALE`,
  as the reference implementation does, so a dead channel gives a finite ``s``).
* :func:`weight_absmax`: ``max|W_:,j|`` over several weights sharing one input.
"""
from __future__ import annotations

import torch

#: the smallest max |x|, max |w| and s used (a channel that never fires gets s >= this)
MIN_SCALE = 1e-5


def weight_absmax(weights: list[torch.Tensor]) -> torch.Tensor:
    """``max|W_:,j|`` per input column over all rows of all ``weights`` (each ``[out_i, in]``)."""
    return torch.stack([w.detach().float().abs().amax(0) for w in weights]).amax(0)


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^α / max|W_:,j|^(1-α)`` (fp32, ``[in]``), inputs and result clamped at
    :data:`MIN_SCALE`."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    x = x_absmax.float().clamp_min(MIN_SCALE)
    w = w_absmax.float().clamp_min(MIN_SCALE)
    return (x.pow(alpha) / w.pow(1 - alpha)).clamp_min(MIN_SCALE)
