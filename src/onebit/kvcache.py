"""A quantized KV cache: int8 / int4 keys and values in onebit's runtime (any weight method).

A transformers :class:`~transformers.cache_utils.Cache` whose layers store each attention layer's
keys and values as integer codes with one fp16 scale and one fp16 minimum per group
(asymmetric min-max, ``bits`` 8 or 4; two int4 codes per byte)::

    scale = (max - min) / (2^bits - 1),  code = round((x - min) / scale),  x̂ = code · scale + min

Groups (``axis``):

* ``token``: per token, ``group`` consecutive channels of one head's vector (a group larger than
  the head is the whole head); every token is quantized as it arrives.
* ``channel``: per channel, ``group`` consecutive tokens (KIVI's key quantization); the tokens of
  a group not yet full stay in the model dtype (at most ``group - 1`` per layer and head).
* ``kivi``: keys per channel, values per token (KIVI, arXiv 2402.02750).

What a forward reads: every token written by an *earlier* call comes back dequantized from
storage; the call's own new tokens attend to each other as computed (a real kernel has them in
registers).  So one forward over a whole window never reads the cache: the cost of quantizing it
only shows when the window is fed in chunks (``onebit eval ppl --kv-chunk C``; ``C = 1`` is
token-by-token decoding, every past key and value read back from int8 / int4).

transformers' own ``QuantizedCache`` needs the optional quanto or HQQ backends (or is per-tensor
fp8), so this one is ours; the math is the pure functions below.  The installed transformers calls
the cache argument ``cache`` (>= 5.24) or ``past_key_values``: :func:`cache_kwarg`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from .calibration import cache_kw
from .errors import OneBitError

KV_KINDS = ("none", "int8", "int4")
KV_AXES = ("token", "channel", "kivi")
#: fp16 scale + fp16 minimum per group
PARAM_BITS = 32


@dataclass
class KVQuantConfig:
    """kind: 'int8' | 'int4' ('none': no cache quantization).  axis: 'token' | 'channel' | 'kivi'
    (see the module doc).  group: channels (per token) or tokens (per channel) per scale."""

    kind: str = "int8"
    axis: str = "token"
    group: int = 32

    @property
    def bits(self) -> int:
        return {"int8": 8, "int4": 4}.get(self.kind, 0)

    def validate(self) -> None:
        if self.kind not in KV_KINDS:
            raise OneBitError(f"--kv-cache must be one of {', '.join(KV_KINDS)}, got '{self.kind}'")
        if self.axis not in KV_AXES:
            raise OneBitError(f"--kv-axis must be one of {', '.join(KV_AXES)}, got '{self.axis}'")
        if isinstance(self.group, bool) or not isinstance(self.group, int) or not 1 <= self.group <= 4096:
            raise OneBitError(f"--kv-group must be an integer in [1, 4096], got {self.group}")
        if self.bits == 4 and self.axis != "token" and self.group % 2:
            raise OneBitError(f"--kv-group must be even for int4 per channel (two codes a byte), got {self.group}")

    def axes(self) -> tuple[str, str]:
        """The grouping of (keys, values)."""
        return ("channel", "token") if self.axis == "kivi" else (self.axis, self.axis)


# ------------------------------------------------------------------- the math (pure functions)
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], last dim even -> two per byte (low nibble first), last dim halved."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack((packed & 15, packed >> 4), -1).flatten(-2)


def quantize_groups(x: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max quantization in groups of ``group`` along the last dim (``x.shape[-1]`` a multiple
    of ``group``): ``(codes uint8 [..., n], scale fp16 [..., n / group], min fp16 [..., n / group])``.
    The codes are computed from the stored (fp16) scale and minimum, so ``x̂`` is what was rounded."""
    g = x.float().unflatten(-1, (-1, group))
    lo, hi = g.amin(-1), g.amax(-1)
    qmax = 2 ** bits - 1
    lo16 = lo.to(torch.float16)
    scale16 = ((hi - lo16.float()) / qmax).clamp_min(1e-8).to(torch.float16)
    codes = torch.round((g - lo16.float()[..., None]) / scale16.float()[..., None]).clamp_(0, qmax)
    return codes.to(torch.uint8).flatten(-2), scale16, lo16


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, group: int,
                      dtype: torch.dtype) -> torch.Tensor:
    g = codes.float().unflatten(-1, (-1, group))
    return (g * scale.float()[..., None] + lo.float()[..., None]).flatten(-2).to(dtype)


def kv_cache_bits(layers: int, kv_heads: int, head_dim: int, tokens: int, bits: int = 16,
                  group: int = 32, axis: str = "token") -> int:
    """Bits a cache of ``tokens`` positions stores (keys and values, batch 1): ``bits = 16`` the fp16
    cache; else codes + 32 bits per group, plus, per channel, the < ``group`` tokens kept in fp16."""
    per_vec = 2 * layers * kv_heads        # key and value vectors per token
    if bits >= 16:
        return per_vec * tokens * head_dim * bits
    total = 0
    for ax in (("channel", "token") if axis == "kivi" else (axis, axis)):
        n = layers * kv_heads
        if ax == "token":
            g = min(group, head_dim)
            total += n * tokens * (head_dim * bits + -(-head_dim // g) * PARAM_BITS)
        else:
            full = tokens // group * group
            total += n * (full * head_dim * bits + full // group * head_dim * PARAM_BITS
                          + (tokens - full) * head_dim * 16)
    return total


# ------------------------------------------------------------------- one tensor's storage
class _QuantStore:
    """One of a layer's key / value streams ``[batch, heads, tokens, head_dim]``, quantized along
    ``axis`` in groups of ``group``."""

    def __init__(self, bits: int, axis: str, group: int):
        self.bits, self.axis, self.group = bits, axis, group
        self.codes = self.scale = self.lo = None     # quantized part
        self.resid: torch.Tensor | None = None        # channel axis: the unfinished group, model dtype
        self.dtype = torch.float32
        self.length = 0

    def _q(self, x: torch.Tensor, group: int):
        codes, scale, lo = quantize_groups(x, self.bits, group)
        return (pack_int4(codes) if self.bits == 4 else codes), scale, lo

    def _append(self, codes, scale, lo, dim: int) -> None:
        if self.codes is None:
            self.codes, self.scale, self.lo = codes, scale, lo
        else:
            self.codes = torch.cat([self.codes, codes], dim)
            self.scale = torch.cat([self.scale, scale], dim)
            self.lo = torch.cat([self.lo, lo], dim)

    def write(self, x: torch.Tensor) -> None:
        self.dtype = x.dtype
        self.length += x.shape[-2]
        d = x.shape[-1]
        if self.axis == "token":
            g = min(self.group, d)
            if d % g:
                raise OneBitError(f"--kv-group {self.group} does not divide the head dimension {d}")
            self._append(*self._q(x, g), dim=-2)
            return
        x = x if self.resid is None else torch.cat([self.resid, x], -2)
        full = x.shape[-2] // self.group * self.group
        if full:      # [b, h, t, d] -> groups of tokens per channel: quantize [b, h, d, t]
            codes, scale, lo = self._q(x[..., :full, :].transpose(-1, -2).contiguous(), self.group)
            self._append(codes, scale, lo, dim=-1)
        self.resid = x[..., full:, :] if full < x.shape[-2] else None

    def read(self) -> torch.Tensor | None:
        if self.codes is None and self.resid is None:
            return None
        parts = []
        if self.codes is not None:
            codes = unpack_int4(self.codes) if self.bits == 4 else self.codes
            if self.axis == "token":
                parts.append(dequantize_groups(codes, self.scale, self.lo, min(self.group, codes.shape[-1]),
                                               self.dtype))
            else:
                parts.append(dequantize_groups(codes, self.scale, self.lo, self.group, self.dtype)
                             .transpose(-1, -2))
        if self.resid is not None:
            parts.append(self.resid)
        return parts[0] if len(parts) == 1 else torch.cat(parts, -2)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.codes, self.scale, self.lo, self.resid) if t is not None]

    def reorder(self, idx: torch.Tensor) -> None:
        for name in ("codes", "scale", "lo", "resid"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, idx.to(t.device)))


def _layer_base():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class QuantizedKVLayer(_layer_base()):
    """One attention layer's cache: keys and values in :class:`_QuantStore`\\ s (see the module doc)."""

    is_croppable = False

    def __init__(self, config: KVQuantConfig):
        super().__init__()
        ka, va = config.axes()
        self.kstore = _QuantStore(config.bits, ka, config.group)
        self.vstore = _QuantStore(config.bits, va, config.group)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past_k, past_v = self.kstore.read(), self.vstore.read()
        self.kstore.write(key_states)
        self.vstore.write(value_states)
        if past_k is None:
            return key_states, value_states
        return torch.cat([past_k, key_states], -2), torch.cat([past_v, value_states], -2)

    def get_seq_length(self) -> int:
        return self.kstore.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.kstore.reorder(beam_idx)
        self.vstore.reorder(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.kstore.length:
            b = (self.kstore.codes if self.kstore.codes is not None else self.kstore.resid).shape[0]
            self.reorder_cache(torch.arange(b).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise OneBitError("the quantized KV cache cannot be cropped (assisted decoding / contrastive search)")

    def reset(self) -> None:
        super().reset()
        for s in (self.kstore, self.vstore):
            s.__init__(s.bits, s.axis, s.group)

    def tensors(self) -> list[torch.Tensor]:
        return self.kstore.tensors() + self.vstore.tensors()


def _cache_base():
    from transformers.cache_utils import Cache

    return Cache


class QuantizedKVCache(_cache_base()):
    """A transformers ``Cache`` of :class:`QuantizedKVLayer`\\ s, one per attention layer (created
    as the model first writes to them)."""

    def __init__(self, config: KVQuantConfig):
        config.validate()
        if config.kind == "none":
            raise OneBitError("QuantizedKVCache needs --kv-cache int8 or int4")
        self.kv_config = config
        super().__init__(layer_class_to_replicate=partial(QuantizedKVLayer, config))

    def storage_bytes(self) -> int:
        """Bytes of every tensor the cache holds now (codes, scales, minima, fp residual)."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors())


def make_cache(config: KVQuantConfig | None):
    """A :class:`QuantizedKVCache` for ``config``, or None (no config, or kind 'none')."""
    if config is None or config.kind == "none":
        if config is not None:
            config.validate()
        return None
    return QuantizedKVCache(config)


#: the name the model's forward takes the cache by: ``cache`` (transformers >= 5.24) or
#: ``past_key_values`` (one place: :func:`onebit.calibration.cache_kw`)
cache_kwarg = cache_kw
