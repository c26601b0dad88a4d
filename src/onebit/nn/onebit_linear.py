"""The OneBit linear layer, ``Y = ((X ⊙ g) · sign(W)ᵀ) ⊙ h`` (+ optional non-affine LayerNorm).

Two forms with the same parameters and the same forward:

* :class:`OneBitLinearTrain` keeps a latent full-precision ``weight`` whose
  sign is taken with a straight-through estimator, and trainable ``g``/``h``;
  it is what distillation trains.
* :class:`OneBitLinear` is the deployed form: ``sign(W)`` as packed bits
  (``weight_packed``, uint8, 8 per byte along in_features) and ``g``/``h`` in
  ``scale_dtype`` (fp16 by default).  Its forward calls the
  ``onebit::binary_linear`` op, whose backend is chosen by device.

The LayerNorm, when enabled, normalises ``Y`` over out_features without
affine parameters (as the paper's code); a bias, if the original linear had
one, is added last.

The packed layer keeps float32 *compute copies* of ``g``, ``h`` and the bias (:class:`ComputeCopies`):
the stored buffers (state dict, checkpoint, ledger) stay in ``scale_dtype``, and no forward casts
them.  fp16 → fp32 is exact, so every backend rounds as with the stored tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels  # noqa: F401  (registers torch.ops.onebit)
from ..kernels.dispatch import direct_kernel
from ..formats.packing import pack_signs, packed_cols, unpack_signs
from ..methods.svid import svid
from .ste import sign_ste

LN_EPS = 1e-5


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor has no version counter (it cannot change in place)
        return -1


def _global_hooks() -> bool:
    """Whether any global module forward hook is set (``nn.modules.module.register_module_forward_hook``)."""
    from torch.nn.modules import module as _m

    return bool(getattr(_m, "_global_forward_hooks", None) or getattr(_m, "_global_forward_pre_hooks", None))


class ComputeCopies:
    """Mixin for an ``nn.Module`` with small stored tensors (scales, bias) read by every forward:
    :meth:`compute` returns one converted to ``dtype``, cached until the stored tensor changes
    (moved or cast by ``.to()``/``.float()``/..., reloaded by ``load_state_dict``, or modified in
    place: its storage and version counter are the cache key), so a decode step casts nothing.
    The copies are plain attributes: not in the state dict, not saved."""

    def compute(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The stored tensor ``name`` in ``dtype`` (itself when it already is)."""
        t = getattr(self, name)
        if t.dtype == dtype:
            return t
        return self.derived(name, dtype, lambda s: s.to(dtype))

    def derived(self, name: str, tag, fn) -> torch.Tensor:
        """``fn(stored tensor name)``, cached under ``(name, tag)`` until that tensor changes."""
        t = getattr(self, name)
        if torch.compiler.is_compiling():
            return fn(t)
        cache = self.__dict__.setdefault("_compute_copies", {})
        key = (t.data_ptr(), t.device, t.dtype, _version(t))
        hit = cache.get((name, tag))
        if hit is None or hit[0] != key:
            hit = cache[(name, tag)] = (key, fn(t.detach()))
        return hit[1]

    def drop_compute_copies(self) -> None:
        self.__dict__.pop("_compute_copies", None)

    def _apply(self, fn, recurse=True):
        self.drop_compute_copies()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self.drop_compute_copies()
        return super()._load_from_state_dict(*args, **kwargs)


class OneBitLinearTrain(nn.Module):
    """Trainable OneBit layer with a latent fp weight (sign via STE)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 layernorm: bool = False, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.layernorm = layernorm
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, device=device))
        self.g = nn.Parameter(torch.ones(in_features, dtype=dtype, device=device))
        self.h = nn.Parameter(torch.ones(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, init: str = "svd", layernorm: bool = False,
                    **svid_kwargs) -> "OneBitLinearTrain":
        w = linear.weight.detach()
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, layernorm,
                dtype=w.dtype, device=w.device)
        a, b = svid(w, init, **svid_kwargs)
        m.weight.copy_(w)
        m.h.copy_(a.to(w.dtype))
        m.g.copy_(b.to(w.dtype))
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x * self.g, sign_ste(self.weight)) * self.h
        if self.layernorm:
            y = F.layer_norm(y, (self.out_features,), eps=LN_EPS)
        return y + self.bias if self.bias is not None else y

    @torch.no_grad()
    def to_packed(self, scale_dtype: torch.dtype | None = None) -> "OneBitLinear":
        """The packed module; ``scale_dtype``: its stored scales' dtype (None: float16)."""
        scale_dtype = scale_dtype or torch.float16
        m = OneBitLinear(self.in_features, self.out_features, self.bias is not None, self.layernorm,
                         scale_dtype=scale_dtype,
                         bias_dtype=self.bias.dtype if self.bias is not None else torch.float32,
                         device=self.weight.device)
        m.weight_packed.copy_(pack_signs(self.weight))
        m.g.copy_(self.g.to(scale_dtype))
        m.h.copy_(self.h.to(scale_dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias)
        return m

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, layernorm={self.layernorm}")


class OneBitLinear(ComputeCopies, nn.Module):
    """Packed OneBit layer for inference (buffers only; no gradients).  ``g``/``h`` reach the
    kernel as float32 compute copies (the CPU kernel computes in fp32 and would otherwise convert
    the stored fp16 tensors at every call)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 layernorm: bool = False, scale_dtype: torch.dtype = torch.float16,
                 bias_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.layernorm = layernorm
        self.register_buffer("weight_packed", torch.zeros(
            out_features, packed_cols(in_features, 1), dtype=torch.uint8, device=device))
        self.register_buffer("g", torch.ones(in_features, dtype=scale_dtype, device=device))
        self.register_buffer("h", torch.ones(out_features, dtype=scale_dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.onebit.binary_linear(x, self.weight_packed, self.compute("g"), self.compute("h"),
                                           self.in_features)
        if self.layernorm:
            y = F.layer_norm(y, (self.out_features,), eps=LN_EPS)
        return y + self.compute("bias", y.dtype) if self.bias is not None else y

    def decode_fn(self):
        """``forward`` for onebit's inference loop (``generate.LlamaRuntime``): the registered device
        kernel called directly with g and h converted once (no module call, no ``compute``, no
        dispatcher).  The module itself where that would change what
        runs: a subclass, an output LayerNorm, a bias, hooks (LoRA adapters), a forward replaced on
        the instance, no direct kernel
        (``ONEBIT_KERNEL=reference``).  Valid while the module's tensors stay as they are, outside
        autograd and torch.compile."""
        kern = direct_kernel("binary_linear", self.weight_packed.device.type)
        if (kern is None or type(self) is not OneBitLinear or self.layernorm or self.bias is not None
                or "forward" in self.__dict__ or self._forward_hooks or self._forward_pre_hooks
                or _global_hooks()):
            return self
        packed, g, h, n = self.weight_packed, self.compute("g"), self.compute("h"), self.in_features
        return lambda x: kern(x, packed, g, h, n)

    @torch.no_grad()
    def to_train(self, dtype: torch.dtype = torch.float32) -> OneBitLinearTrain:
        """The trainable form with the same forward (latent weight = sign ⊙ |h gᵀ|)."""
        m = OneBitLinearTrain(self.in_features, self.out_features, self.bias is not None,
                              self.layernorm, dtype=dtype, device=self.weight_packed.device)
        s = unpack_signs(self.weight_packed, self.in_features, dtype)
        mag = torch.outer(self.h.to(dtype).abs(), self.g.to(dtype).abs()).clamp_min(1e-8)
        m.weight.copy_(s * mag)
        m.g.copy_(self.g.to(dtype))
        m.h.copy_(self.h.to(dtype))
        if self.bias is not None:
            m.bias.copy_(self.bias.to(dtype))
        return m

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The effective dense weight ``sign(W) ⊙ (h gᵀ)`` (no LayerNorm)."""
        s = unpack_signs(self.weight_packed, self.in_features, dtype)
        return s * torch.outer(self.h.to(dtype), self.g.to(dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, layernorm={self.layernorm}, "
                f"scale_dtype={self.g.dtype}")
