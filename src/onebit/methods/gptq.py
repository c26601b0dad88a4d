"""GPTQ (Frantar et al. 2023): quantize columns one at a time, pushing each column's rounding
error onto the not-yet-quantized columns through the inverse Hessian of the layer's inputs.

Pure math: :func:`gptq_quantize_weight` (``W``, ``H`` -> codes, scale, zero in the same
format as RTN), :class:`HessianAccumulator` (``H = 2/n Σ x xᵀ``).  The handler is a ``"blocks"``
driver (:mod:`onebit.pipelines.sequential` runs the decoder blocks in order on calibration data):
``observe`` accumulates each linear's Hessian while its block runs in full precision,
``quantize_block`` quantizes the block's linears; the pipeline then re-runs the block quantized
to give the next block its inputs (so later blocks see the errors of earlier ones).

Options: ``damp`` (fraction of mean diag(H) added to the diagonal), ``block_size`` (lazy
batch updates), ``act_order`` (columns in order of decreasing diag(H)), ``static_groups``
(group scales from the unmodified weight, fixed before the error propagation).  With
``act_order`` and groups, static groups are always used, so groups stay contiguous in the
packed layout (no per-column group index).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..config import parse_dtype
from ..errors import OneBitError
from ..nn.quant_linear import QuantLinearTrain
from ..registry import register_method
from .quant import check_group_size, dequantize_codes, find_qparams, num_groups
from .rtn import RTNConfig, UniformHandler
from ..method_configs import GPTQConfig  # noqa: F401  (torch-free; re-exported)

log = logging.getLogger("onebit")


@torch.no_grad()
def gptq_quantize_weight(W: torch.Tensor, H: torch.Tensor, bits: int, sym: bool = True,
                         group_size: int = 0, block_size: int = 128, damp: float = 0.01,
                         act_order: bool = False, static_groups: bool = False, clip: str = "minmax",
                         scale_dtype: torch.dtype | None = torch.float16):
    """GPTQ for one ``[out, in]`` weight and its ``[in, in]`` input Hessian.

    Returns ``(codes uint8 [out, in], scale, zero)`` with ``scale``/``zero`` shaped as
    :func:`onebit.methods.quant.params_shape`; ``Ŵ = (codes - zero) * scale``.
    """
    W = W.detach().float().clone()
    H = H.detach().float().clone()
    out, cols = W.shape
    check_group_size(group_size, cols)
    maxq = 2 ** bits - 1
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    grouped = group_size > 0
    static = not grouped or static_groups or act_order
    if static:
        scale, zero = find_qparams(W, bits, sym, group_size, clip, scale_dtype)
    else:
        scale = torch.ones(out, num_groups(cols, group_size))
        zero = torch.zeros_like(scale)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    codes = torch.zeros(out, cols, dtype=torch.uint8)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // group_size if grouped else 0
            if grouped and not static and col % group_size == 0:
                # group params from the weights as updated so far (columns col .. col+gs-1)
                grp = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group_size]
                s, z = find_qparams(grp, bits, sym, 0, clip, scale_dtype)
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            s = scale[:, g] if scale.shape[0] > 1 else scale[0, 0].expand(out)
            z = zero[:, g] if zero.shape[0] > 1 else zero[0, 0].expand(out)
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s) + z, 0, maxq)
            codes[:, i1 + i] = q.to(torch.uint8)
            err = (w - (q - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        codes = codes[:, torch.argsort(perm)]
    return codes, scale, zero


class HessianAccumulator:
    """Running ``H = 2/n Σ x xᵀ`` over the rows of every input seen (GPTQ's ``add_batch``)."""

    def __init__(self, in_features: int, device=None):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        self.H *= self.n / (self.n + m)
        self.n += m
        x = x * (2 / self.n) ** 0.5
        self.H += x.T @ x


@register_method(GPTQConfig)
class GPTQHandler(UniformHandler):
    config: GPTQConfig

    def gptq_linear(self, name: str, linear: nn.Linear, H: torch.Tensor) -> nn.Module:
        c = self.config
        sd = parse_dtype(c.scale_dtype)
        codes, scale, zero = gptq_quantize_weight(
            linear.weight, H, c.bits, c.sym, c.group_size, c.block_size, c.damp, c.act_order,
            c.static_groups, c.clip, sd)
        w_hat = dequantize_codes(codes, scale, zero, c.group_size).to(linear.weight.dtype)
        act_scale = torch.ones(1) if c.static_acts else None
        train = QuantLinearTrain.from_params(w_hat, scale, zero, c.bits, c.group_size, c.sym, linear.bias,
                                             c.act_bits, act_scale, sd)
        return train.to_packed()

    driver = "blocks"

    def quantize_linear(self, name: str, linear: nn.Linear, H: torch.Tensor | None = None,
                        **kwargs) -> nn.Module:
        """One layer with its input Hessian ``H`` (GPTQ cannot run one layer at a time without it)."""
        if H is None:
            raise OneBitError("gptq needs the Hessian of each layer's inputs from calibration data "
                              "through the whole model (quantize(), not one layer at a time / --streaming)")
        self.check_layer(name, linear)
        return self.gptq_linear(name, linear, H)

    def begin_blocks(self, prefix: str) -> None:
        self._hessians: dict[str, HessianAccumulator] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        acc = self._hessians.get(name)
        if acc is None:
            acc = self._hessians[name] = HessianAccumulator(x.shape[-1], x.device)
        acc.add(x)

    def quantize_block(self, block: nn.Module, prefix: str, lins: dict[str, nn.Linear]) -> dict[str, nn.Module]:
        out = {}
        for n, lin in lins.items():
            acc = self._hessians.pop(n, None)
            H = acc.H.cpu() if acc is not None else torch.zeros(lin.in_features, lin.in_features)
            out[n] = self.gptq_linear(n, lin, H)
        return out

    def quantize_outside(self, name: str, linear: nn.Linear) -> nn.Module:
        """H = I: round to nearest."""
        return self.quantize_linear(name, linear, H=torch.eye(linear.in_features))
