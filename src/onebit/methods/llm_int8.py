"""LLM.int8() (Dettmers et al. 2022): int8 weights (per row) and int8 activations (per token), with
the outlier input features — calibration ``max|x| > threshold`` (6.0) — kept in fp16.

The paper finds the outlier features at run time, per batch; here they are fixed per layer from
calibration data (one fp forward pass), so the packed layout is static: the config's ``outliers``
(filled by quantization, read back when loading) holds each layer's count, and each layer's
outlier fraction is logged.  ``threshold=inf``: no outliers, plain W8A8 (per-row / per-token).

Math: :mod:`onebit.methods.int8quant`; packed module: :class:`onebit.nn.llm_int8_linear.LLMInt8Linear`.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..errors import OneBitError
from ..nn.llm_int8_linear import LLMInt8Linear
from ..registry import MethodHandler, register_method
from .common import calibration_ids, check_finite_weight
from .int8quant import outlier_columns
from ..method_configs import LLMInt8Config  # noqa: F401  (torch-free; re-exported)

log = logging.getLogger("onebit")


@torch.no_grad()
def input_absmax(model: nn.Module, modules: dict[str, nn.Module], ids: torch.Tensor,
                 batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``max|x|`` per input feature of each module over the calibration ``ids`` (one fp pass)."""
    amax = {n: torch.zeros(m.in_features) for n, m in modules.items()}
    handles = []
    for n, m in modules.items():
        def hook(mod, args, _n=n):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float().cpu()
            torch.maximum(amax[_n], x, out=amax[_n])
        handles.append(m.register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    try:
        for i in range(0, ids.shape[0], batch_size):
            model(ids[i:i + batch_size].to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return amax


@register_method(LLMInt8Config)
class LLMInt8Handler(MethodHandler):
    config: LLMInt8Config

    def quantize_linear(self, name: str, linear: nn.Linear, outliers: torch.Tensor | None = None,
                        **kwargs) -> nn.Module:
        check_finite_weight(name, linear)
        if outliers is None:
            if math.isinf(self.config.threshold):
                outliers = torch.zeros(0, dtype=torch.long)
            else:
                raise OneBitError("llm-int8 finds its outlier features on calibration data through the "
                                  "whole model (quantize(), not one layer at a time / --streaming)")
        return LLMInt8Linear.from_linear(linear, outliers)

    def quantize_model(self, model: nn.Module, targets: list[tuple[str, nn.Linear]],
                       progress: bool = True, calib_ids: torch.Tensor | None = None, tokenizer=None,
                       batch_size: int = 8, **kwargs) -> dict[str, nn.Module]:
        for name, lin in targets:
            check_finite_weight(name, lin)
        ids = calibration_ids(model, self.config, calib_ids, tokenizer, progress)
        amax = input_absmax(model, dict(targets), ids, batch_size)
        out, counts = {}, {}
        for name, lin in targets:
            idx = outlier_columns(amax[name], self.config.threshold)
            out[name] = self.quantize_linear(name, lin, outliers=idx)
            counts[name] = int(idx.numel())
        self.config.outliers = {n: k for n, k in counts.items() if k}
        self.outlier_fraction = {n: counts[n] / lin.in_features for n, lin in targets}
        total = sum(counts.values()) / sum(lin.in_features for _, lin in targets)
        log.info("llm-int8: outlier features (max|x| > %g) %.2f%% of all input features; per layer: %s",
                 self.config.threshold, 100 * total,
                 ", ".join(f"{n}={100 * f:.1f}%" for n, f in self.outlier_fraction.items() if f) or "none")
        return out

    def empty_module(self, name: str, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype) -> nn.Module:
        return LLMInt8Linear(in_features, out_features, int(self.config.outliers.get(name, 0)), bias,
                             bias_dtype=dtype, device="meta")
