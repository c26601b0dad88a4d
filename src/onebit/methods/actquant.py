"""Activation quantization, reusable by any method (a config's ``act_*`` fields).

Symmetric absmax integer quantization of a linear layer's input, ``bits`` in
2..8 (8 = int8, ``qmax = 2**(bits-1) - 1 = 127``)::

    s     = absmax / qmax
    x_hat = clamp(round(x / s), -qmax - 1, qmax) * s

* **dynamic** (``act_mode="dynamic"``): ``absmax`` per token (over the last
  dimension), computed at run time — BitNet's ``absmax`` quantization;
  nothing is stored.
* **static** (``act_mode="static"``): one ``absmax`` per layer, fixed from
  calibration data by an observer and stored as the layer's ``act_scale``
  (``s``, fp32 ``[1]``; counted by the ledger).  Observers: ``minmax``
  (largest |x| seen), ``ema`` (moving average of each batch's max |x|,
  momentum 0.9), ``percentile`` (mean over batches of the ``act_percentile``
  percentile of |x|, which ignores rare outliers).

The packed modules apply :func:`quantize_activations` before their op; the
train modules apply :func:`quantize_activations_ste` (identity gradient).
Both give the same values.  (The reference kernels then multiply in float;
an int8 GEMM is a backend's business.)
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ACT_BITS, ACT_MODES, OBSERVERS, QuantConfig  # noqa: F401  (choices re-exported)
from ..errors import OneBitError
from ..method_configs import ActQuantConfig  # noqa: F401  (torch-free; re-exported)
from ..progress import Progress as tqdm


# ------------------------------------------------------------------- the math
def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def quantize_activations(x: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantized ``x``: per-token absmax (``scale`` None) or a fixed static ``scale``."""
    if bits <= 0:
        return x
    qmax = _qmax(bits)
    if scale is None:
        s = (x.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(1e-8)
    else:
        s = scale.to(x.dtype)
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s


def quantize_activations_ste(x: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    if bits <= 0:
        return x
    return x + (quantize_activations(x, bits, scale) - x).detach()


# ------------------------------------------------------------------- observers
class Observer:
    def __init__(self, percentile: float = 99.9):
        self.value: float | None = None
        self.n = 0
        self.percentile = percentile

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def absmax(self) -> float:
        if self.value is None:
            raise OneBitError("activation observer saw no data (calibration never reached this layer)")
        return float(self.value)


class MinMaxObserver(Observer):
    def update(self, x):
        m = float(x.detach().abs().max())
        self.value = m if self.value is None else max(self.value, m)


class MovingAverageObserver(Observer):
    momentum = 0.9

    def update(self, x):
        m = float(x.detach().abs().max())
        self.value = m if self.value is None else self.momentum * self.value + (1 - self.momentum) * m


class PercentileObserver(Observer):
    max_elems = 1 << 22

    def update(self, x):
        a = x.detach().abs().flatten().float()
        if a.numel() > self.max_elems:  # a fixed stride subsample keeps kthvalue cheap
            a = a[:: (a.numel() + self.max_elems - 1) // self.max_elems]
        k = max(1, min(a.numel(), int(round(self.percentile / 100 * a.numel()))))
        m = float(a.kthvalue(k).values)
        self.n += 1
        self.value = m if self.value is None else self.value + (m - self.value) / self.n


OBSERVER_CLASSES = {"minmax": MinMaxObserver, "ema": MovingAverageObserver, "percentile": PercentileObserver}


def make_observer(name: str, percentile: float = 99.9) -> Observer:
    return OBSERVER_CLASSES[name](percentile)


@torch.no_grad()
def calibrate_static_scales(model: nn.Module, modules: dict[str, nn.Module], calib_ids: torch.Tensor,
                            config: ActQuantConfig, batch_size: int = 8, progress: bool = False) -> None:
    """Run ``calib_ids`` through ``model`` (whose linears are already the quantized ``modules``)
    and set each module's ``act_scale`` from an observer of the tensor it quantizes.

    Activation quantization is off while observing, so every layer sees the float activations
    of the (weight-quantized) model.
    """
    observers = {n: make_observer(config.act_observer, config.act_percentile) for n in modules}
    hooks, saved_bits = [], {}
    for name, mod in modules.items():
        saved_bits[name] = mod.act_bits
        mod.act_bits = 0

        def hook(m, args, _name=name):
            observers[_name].update(m.act_input(args[0]))

        hooks.append(mod.register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    try:
        for i in tqdm(range(0, calib_ids.shape[0], batch_size), desc="act scales", disable=not progress):
            model(calib_ids[i:i + batch_size].to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        for name, mod in modules.items():
            mod.act_bits = saved_bits[name]
    qmax = _qmax(config.act_bits)
    for name, mod in modules.items():
        mod.act_scale.fill_(max(observers[name].absmax(), 1e-8) / qmax)


class ActQuantMixin:
    """For modules with ``act_bits`` and an optional ``act_scale`` buffer: the activation step."""

    act_bits: int
    act_scale: torch.Tensor | None

    def act_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor that is quantized (the input; OneBit-W1A8 overrides it with ``x ⊙ g``)."""
        return x

    def _init_act(self, act_bits: int, static: bool, device=None) -> None:
        self.act_bits = act_bits
        if act_bits > 0 and static:
            self.register_buffer("act_scale", torch.ones(1, dtype=torch.float32, device=device))
        else:
            self.act_scale = None

    def _copy_act(self, other) -> None:
        other.act_bits = self.act_bits
        if self.act_scale is not None:
            other.act_scale.copy_(self.act_scale)

    def quant_act(self, x: torch.Tensor, ste: bool = False) -> torch.Tensor:
        fn = quantize_activations_ste if ste else quantize_activations
        return fn(x, self.act_bits, self.act_scale)
