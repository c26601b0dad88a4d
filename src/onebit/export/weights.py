"""A packed onebit layer as exact integer codes and block scales, then as a llama.cpp block type.

Every exportable layer is read into :class:`Codes`: integer values ``[rows, cols]`` and one
fp16 scale per block of ``block`` weights along each row, such that the layer's weight is
``values · scale`` exactly.  :func:`encode` then picks the smallest llama.cpp type that holds
those values and whose blocks fit (a row scale is constant on every block of every type).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OneBitError
from ..formats import gguf_blocks as gb
from ..formats.packing import unpack, unpack_signs


@dataclass
class Codes:
    values: np.ndarray      # int8 [rows, cols]
    scales: np.ndarray      # float32 [rows, nb] (each exactly an fp16 value), one per block
    block: int              # weights per scale along a row (the last block may be shorter)
    kind: str               # "sign", "ternary", "int4", "int8"

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    def permute_rows(self, idx: np.ndarray) -> "Codes":
        return Codes(self.values[idx], self.scales[idx], self.block, self.kind)

    def per_block(self, block: int) -> np.ndarray | None:
        """fp16 scales for blocks of ``block`` weights, or None if a block would straddle two scales."""
        cols = self.values.shape[1]
        if cols % block:
            return None
        starts = np.arange(0, cols, block)
        first, last = starts // self.block, (starts + block - 1) // self.block
        if not np.array_equal(first, last):
            return None
        return self.scales[:, first].astype(np.float16)


#: the types a kind of codes can go to, smallest first
CANDIDATES = {"sign": ("q1_0", "tq2_0", "q2_0"), "ternary": ("tq2_0", "q2_0"),
              "int4": ("q4_0",), "int8": ("q8_0",)}
ENCODERS = {"q2_0": gb.encode_q2_0, "tq2_0": gb.encode_tq2_0, "q4_0": gb.encode_q4_0,
            "q8_0": gb.encode_q8_0}


def encode(c: Codes, prefer: str | None = None) -> tuple[np.ndarray, str]:
    """``(bytes [rows, row_bytes], type name)``: ``prefer`` if it holds the codes exactly, else the
    smallest type that does."""
    order = list(CANDIDATES[c.kind])
    if prefer in order:
        order.remove(prefer)
        order.insert(0, prefer)
    for t in order:
        d = c.per_block(gb.TYPES[t][1])
        if d is None:
            continue
        if t == "q1_0":
            bits = np.packbits(c.values > 0, axis=1, bitorder="little")
            return gb.encode_q1_0(bits, d, c.values.shape[1]), t
        return ENCODERS[t](c.values, d), t
    raise OneBitError(f"rows of {c.values.shape[1]} weights fit none of {', '.join(order)} "
                      f"(blocks of {', '.join(str(gb.TYPES[t][1]) for t in order)})")


def _f16(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float16).float().cpu().numpy()


def onebit_codes(mod, h: torch.Tensor | None = None) -> Codes:
    """OneBit (``g`` already folded away): signs and the row scale ``h`` (fp16-rounded)."""
    s = unpack_signs(mod.weight_packed, mod.in_features, torch.float32).to(torch.int8).numpy()
    hh = _f16(mod.h if h is None else h)
    return Codes(s, hh[:, None], mod.in_features, "sign")


def dense_sign_codes(w: torch.Tensor, block: int) -> Codes:
    """Any dense weight ``[rows, cols]`` approximated as signs with one scale per block of ``block``
    weights of a row: ``sign(w)`` and the mean ``|w|`` of the block (the least-squares scale for
    those signs), fp16-rounded.  The approximate form of layers whose scales no llama.cpp type
    holds (rank-k, mixture of scales)."""
    w = w.detach().float().cpu()
    rows, cols = w.shape
    nb = -(-cols // block)
    pad = nb * block - cols
    sums = torch.nn.functional.pad(w.abs(), (0, pad)).reshape(rows, nb, block).sum(-1)
    counts = torch.full((nb,), float(block))
    counts[-1] = block - pad
    d = (sums / counts).to(torch.float16).float().numpy()
    v = torch.where(w >= 0, 1, -1).to(torch.int8).numpy()
    return Codes(v, d, block, "sign")


def block_sign_codes(mod) -> Codes:
    s = unpack_signs(mod.weight_packed, mod.in_features, torch.float32).to(torch.int8).numpy()
    return Codes(s, _f16(mod.scales), mod.group_size, "sign")


def bitnet_codes(mod, ternary: bool) -> Codes:
    if ternary:
        v = (unpack(mod.weight_packed, 2, mod.in_features).to(torch.int16) - 1).to(torch.int8).numpy()
    else:
        v = unpack_signs(mod.weight_packed, mod.in_features, torch.float32).to(torch.int8).numpy()
    scale = np.full((mod.out_features, 1), _f16(mod.scale.reshape(1))[0], dtype=np.float32)
    return Codes(v, scale, mod.in_features, "ternary" if ternary else "sign")


def uniform_codes(mod, name: str) -> Codes:
    """RTN/GPTQ symmetric 4-bit or 8-bit with groups of 32: Q4_0 / Q8_0 exactly."""
    if mod.zero is not None or mod.group_size != 32 or mod.bits not in (4, 8):
        raise OneBitError(
            f"'{name}' is {mod.bits}-bit, group {mod.group_size}, {'sym' if mod.zero is None else 'asym'}: "
            "llama.cpp holds RTN/GPTQ exactly only as symmetric 4-bit (Q4_0) or 8-bit (Q8_0) with "
            "--group-size 32 (quantize with --bits 4 --group-size 32 --sym)")
    v = (mod.codes().to(torch.int16) - 2 ** (mod.bits - 1)).to(torch.int8).numpy()
    return Codes(v, mod.scale.float().numpy(), 32, "int4" if mod.bits == 4 else "int8")
