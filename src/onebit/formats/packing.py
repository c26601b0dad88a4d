"""Bit packing, pure torch.  Kept apart from every algorithm.

Layout (format version 1)
-------------------------
A matrix ``Q`` of shape ``[rows, cols]`` holding unsigned codes of ``bits``
bits (``bits`` in 1..8) is packed along the **last** dimension
(``in_features`` for a linear weight) into ``uint8`` of shape
``[rows, ceil(cols * bits / 8)]``:

* byte ``j`` holds codes ``j*k .. j*k + k-1`` where ``k = 8 // bits``;
* code ``j*k + i`` occupies bits ``i*bits .. i*bits + bits-1`` of the byte,
  i.e. **least-significant bits first** (little-endian within a byte);
* when ``cols`` is not a multiple of ``k`` the last byte is padded with zero
  codes, which unpacking drops.

**3 bits** (and 5, 6, 7: any width that does not divide 8) uses the same rule read as
one little-endian bit stream: code ``c`` occupies stream bits
``c*bits .. c*bits + bits-1``, where stream bit ``n`` is bit ``n % 8`` of
byte ``n // 8``.  So 8 codes fill exactly 3 bytes: byte 0 holds code 0 (bits
0-2), code 1 (bits 3-5) and the low 2 bits of code 2; byte 1 holds the high
bit of code 2, code 3, code 4 and the low bit of code 5; byte 2 holds the
high 2 bits of code 5, code 6 and code 7.  A row of ``cols`` codes takes
``ceil(cols * 3 / 8)`` bytes; the unused high bits of the last byte are
zero.  (For 1/2/4/8 bits this stream rule is exactly the per-byte layout
above, so it is one layout, not two.)

For 1-bit sign weights the code is ``1`` for ``+1`` and ``0`` for ``-1``;
``sign(0)`` is taken as ``+1`` so every weight has a sign and an all-zero row
still gives a well-defined (if useless) layer.
"""
from __future__ import annotations

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def _check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    return 8 // bits


def packed_cols(cols: int, bits: int) -> int:
    """Number of bytes per row after packing ``cols`` codes of ``bits`` bits."""
    _check_bits(bits)
    return (cols * bits + 7) // 8


def _pack_stream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-stream packing for widths that do not divide 8: 8 codes -> ``bits`` bytes."""
    cols = codes.shape[-1]
    pad = (-cols) % 8
    c = codes.to(torch.int64)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*codes.shape[:-1], -1, 8)
    word = (c << torch.arange(0, 8 * bits, bits, device=codes.device)).sum(-1, keepdim=True)
    out = (word >> torch.arange(0, 8 * bits, 8, device=codes.device)) & 0xFF
    return out.reshape(*codes.shape[:-1], -1)[..., :packed_cols(cols, bits)].to(torch.uint8)


def _unpack_stream(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    nbytes = packed.shape[-1]
    pad = (-nbytes) % bits
    b = packed.to(torch.int64)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.reshape(*packed.shape[:-1], -1, bits)
    word = (b << torch.arange(0, 8 * bits, 8, device=packed.device)).sum(-1, keepdim=True)
    out = (word >> torch.arange(0, 8 * bits, bits, device=packed.device)) & ((1 << bits) - 1)
    return out.reshape(*packed.shape[:-1], -1)[..., :cols].to(torch.uint8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` along the last dim into uint8."""
    k = _check_bits(bits)
    if codes.dtype.is_floating_point:
        raise TypeError("pack() takes integer codes, not floating point values")
    if 8 % bits:
        return _pack_stream(codes, bits)
    cols = codes.shape[-1]
    pad = (-cols) % k
    c = codes.to(torch.uint8)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*codes.shape[:-1], -1, k)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
    # codes are < 2**bits so the shifted values never overlap: sum == bitwise or
    return (c << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 ``[..., nbytes]`` -> uint8 codes ``[..., cols]``."""
    k = _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed tensor must be uint8, got {packed.dtype}")
    if packed.shape[-1] * 8 // bits < cols:
        raise ValueError(f"packed tensor holds {packed.shape[-1] * 8 // bits} codes per row, need {cols}")
    if 8 % bits:
        return _unpack_stream(packed, bits, cols)
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    out = (packed.unsqueeze(-1) >> shifts) & mask
    return out.reshape(*packed.shape[:-1], -1)[..., :cols]


def pack_signs(w: torch.Tensor) -> torch.Tensor:
    """Pack ``sign(w)`` (+1 -> bit 1, -1 -> bit 0, 0 -> +1) along the last dim."""
    return pack((w >= 0).to(torch.uint8), 1)


def unpack_signs(packed: torch.Tensor, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unpack to a ``±1`` matrix of ``dtype``."""
    bits = unpack(packed, 1, cols)
    return bits.to(dtype) * 2 - 1


def sign(w: torch.Tensor) -> torch.Tensor:
    """``sign`` with the packing convention ``sign(0) = +1`` (values are exactly ±1)."""
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
