"""llama.cpp's block formats, encoded from onebit's exact representations (pure numpy).

Each encoder takes what a onebit layer already stores (sign bits, ternary or integer codes,
fp16 scales) and returns the GGUF tensor bytes, ``uint8 [rows, row_bytes]``, such that
llama.cpp's dequantization gives back exactly the same weight.  Decoders are here too (the
exact inverse, used by the tests and by ``onebit info``).

Type ids and block layouts are those of ggml (``ggml-common.h``), also listed by the ``gguf``
package's ``GGML_QUANT_SIZES`` (Q2_0 is newer than gguf 0.19 and is listed here only):

=======  =====  ==================================================  ========
type     block  layout                                              bits/w
=======  =====  ==================================================  ========
Q1_0     128    fp16 d, 16 B of bits (LSB first, 1 → +d, 0 → -d)    1.125
Q2_0     64     fp16 d, 16 B of 2-bit codes q, value (q - 1)·d       2.25
TQ2_0    256    64 B of 2-bit codes q (value (q - 1)·d), fp16 d      2.0625
Q4_0     32     fp16 d, 16 B of nibbles q, value (q - 8)·d           4.5
Q8_0     32     fp16 d, 32 int8 q, value q·d                         8.5
Q6_K     256    128 B low nibbles, 64 B high 2 bits, 16 int8 sub-     6.5625
                scales s (one per 16), fp16 d; value (q - 32)·s·d
=======  =====  ==================================================  ========

Q6_K is only written for dense tensors (``--embed-type q6_k``): :func:`encode_q6_k` is a numpy
port of llama.cpp's reference quantizer (``quantize_row_q6_K_ref`` / ``make_qx_quants``), in
float32 with the same round-half-to-even.
"""
from __future__ import annotations

import numpy as np

#: ggml type id, weights per block, bytes per block
TYPES: dict[str, tuple[int, int, int]] = {
    "f32": (0, 1, 4), "f16": (1, 1, 2), "q4_0": (2, 32, 18), "q8_0": (8, 32, 34),
    "tq2_0": (35, 256, 66), "q1_0": (41, 128, 18), "q2_0": (42, 64, 18), "q6_k": (14, 256, 210),
}
TYPE_NAMES = {tid: name for name, (tid, _, _) in TYPES.items()}


def bits_per_weight(name: str) -> float:
    _, block, nbytes = TYPES[name]
    return nbytes * 8 / block


def fits(name: str, cols: int) -> bool:
    """Whether rows of ``cols`` weights can be stored in type ``name`` (whole blocks only)."""
    return cols % TYPES[name][1] == 0


def _check(name: str, cols: int) -> int:
    block = TYPES[name][1]
    if cols % block:
        raise ValueError(f"{name.upper()} needs rows of a multiple of {block} weights, got {cols}")
    return cols // block


def _d_bytes(d: np.ndarray) -> np.ndarray:
    """fp16 scales ``[rows, nb]`` as ``[rows, nb, 2]`` little-endian bytes."""
    return np.ascontiguousarray(d.astype("<f2")).view(np.uint8).reshape(*d.shape, 2)


def _d_from(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view("<f2").reshape(raw.shape[:-1]).astype(np.float32)


def encode_q1_0(packed: np.ndarray, d: np.ndarray, cols: int) -> np.ndarray:
    """Q1_0 from onebit's packed signs (``uint8 [rows, cols/8]``, LSB first, 1 = +) and fp16
    scales ``[rows, cols/128]``: the bits copy over unchanged."""
    nb = _check("q1_0", cols)
    rows = packed.shape[0]
    qs = packed[:, : cols // 8].reshape(rows, nb, 16)
    return np.concatenate([_d_bytes(d), qs], axis=2).reshape(rows, nb * 18)


def decode_q1_0(raw: np.ndarray, cols: int) -> np.ndarray:
    nb = _check("q1_0", cols)
    blk = raw.reshape(raw.shape[0], nb, 18)
    bits = np.unpackbits(blk[:, :, 2:], axis=2, bitorder="little").astype(np.float32)
    return ((bits * 2 - 1) * _d_from(blk[:, :, :2])[:, :, None]).reshape(raw.shape[0], cols)


def _pack2(q: np.ndarray) -> np.ndarray:
    """2-bit codes ``[..., 4k]`` → bytes ``[..., k]``, element j at bits 2·(j % 4) of byte j // 4."""
    q = q.astype(np.uint8).reshape(*q.shape[:-1], -1, 4)
    return q[..., 0] | (q[..., 1] << 2) | (q[..., 2] << 4) | (q[..., 3] << 6)


def _unpack2(b: np.ndarray) -> np.ndarray:
    return np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=-1).reshape(*b.shape[:-1], -1)


def encode_q2_0(values: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q2_0 from integer values in {-1, 0, 1, 2} ``[rows, cols]`` and fp16 scales ``[rows, cols/64]``."""
    rows, cols = values.shape
    nb = _check("q2_0", cols)
    qs = _pack2((values + 1).reshape(rows, nb, 64))
    return np.concatenate([_d_bytes(d), qs], axis=2).reshape(rows, nb * 18)


def decode_q2_0(raw: np.ndarray, cols: int) -> np.ndarray:
    nb = _check("q2_0", cols)
    blk = raw.reshape(raw.shape[0], nb, 18)
    q = _unpack2(blk[:, :, 2:]).astype(np.float32) - 1
    return (q * _d_from(blk[:, :, :2])[:, :, None]).reshape(raw.shape[0], cols)


def _tq2_order(rows: int, nb: int, q: np.ndarray) -> np.ndarray:
    # element e of a block: chunk e // 128, lane l = (e % 128) // 32, byte chunk·32 + e % 32, shift 2l
    return q.reshape(rows, nb, 2, 4, 32).transpose(0, 1, 2, 4, 3)  # [.., chunk, m, l]


def encode_tq2_0(values: np.ndarray, d: np.ndarray) -> np.ndarray:
    """TQ2_0 from ternary values ``[rows, cols]`` and fp16 scales ``[rows, cols/256]``."""
    rows, cols = values.shape
    nb = _check("tq2_0", cols)
    q = _tq2_order(rows, nb, (values + 1).astype(np.uint8))
    qs = _pack2(q.reshape(rows, nb, 256))  # the 4 lanes of one byte are consecutive after transpose
    return np.concatenate([qs, _d_bytes(d)], axis=2).reshape(rows, nb * 66)


def decode_tq2_0(raw: np.ndarray, cols: int) -> np.ndarray:
    nb = _check("tq2_0", cols)
    rows = raw.shape[0]
    blk = raw.reshape(rows, nb, 66)
    q = _unpack2(blk[:, :, :64]).reshape(rows, nb, 2, 32, 4).transpose(0, 1, 2, 4, 3)
    q = q.reshape(rows, nb, 256).astype(np.float32) - 1
    return (q * _d_from(blk[:, :, 64:])[:, :, None]).reshape(rows, cols)


def encode_q4_0(values: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q4_0 from integer values in [-8, 7] ``[rows, cols]`` and fp16 scales ``[rows, cols/32]``."""
    rows, cols = values.shape
    nb = _check("q4_0", cols)
    q = (values + 8).astype(np.uint8).reshape(rows, nb, 32)
    qs = q[:, :, :16] | (q[:, :, 16:] << 4)
    return np.concatenate([_d_bytes(d), qs], axis=2).reshape(rows, nb * 18)


def decode_q4_0(raw: np.ndarray, cols: int) -> np.ndarray:
    nb = _check("q4_0", cols)
    blk = raw.reshape(raw.shape[0], nb, 18)
    qs = blk[:, :, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32) - 8
    return (q * _d_from(blk[:, :, :2])[:, :, None]).reshape(raw.shape[0], cols)


def encode_q8_0(values: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Q8_0 from integer values in [-128, 127] ``[rows, cols]`` and fp16 scales ``[rows, cols/32]``."""
    rows, cols = values.shape
    nb = _check("q8_0", cols)
    q = values.astype(np.int8).view(np.uint8).reshape(rows, nb, 32)
    return np.concatenate([_d_bytes(d), q], axis=2).reshape(rows, nb * 34)


def decode_q8_0(raw: np.ndarray, cols: int) -> np.ndarray:
    nb = _check("q8_0", cols)
    blk = raw.reshape(raw.shape[0], nb, 34)
    q = np.ascontiguousarray(blk[:, :, 2:]).view(np.int8).astype(np.float32)
    return (q * _d_from(blk[:, :, :2])[:, :, None]).reshape(raw.shape[0], cols)


def _q6_k_subblock_scales(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp's ``make_qx_quants(16, 32, x, L, rmse_type=1)`` on every row of ``x``
    (float32 ``[n, 16]``): ``(scale [n], codes L in [0, 63] [n, 16])``.  A weighted (w = x²)
    least-squares scale, trying 19 candidate inverse scales around -32/max."""
    nmax = np.float32(32)
    n = x.shape[0]
    mx = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]  # first max |x|, signed
    live = np.abs(mx) >= np.float32(1e-15)
    mx = np.where(live, mx, np.float32(1))
    w = x * x

    def attempt(iscale):
        lv = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        sumlx = np.zeros(n, np.float32)
        suml2 = np.zeros(n, np.float32)
        for i in range(x.shape[1]):          # sequential float32 sums, as the C loop
            sumlx += w[:, i] * x[:, i] * lv[:, i]
            suml2 += w[:, i] * lv[:, i] * lv[:, i]
        return lv, sumlx, suml2

    lv, sumlx, suml2 = attempt(-nmax / mx)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, np.float32(0)).astype(np.float32)
        best = scale * sumlx
        for k in range(-9, 10):
            if k == 0:
                continue
            cand, sx, s2 = attempt(-(nmax + np.float32(0.1) * np.float32(k)) / mx)
            better = (s2 > 0) & (sx * sx > best * s2)
            lv = np.where(better[:, None], cand, lv)
            scale = np.where(better, sx / s2, scale).astype(np.float32)
            best = np.where(better, scale * sx, best)
    codes = (lv + nmax).astype(np.uint8)
    codes[~live] = 0
    scale[~live] = 0
    return scale, codes


def encode_q6_k(w: np.ndarray) -> np.ndarray:
    """Q6_K of a float matrix ``[rows, cols]`` (cols a multiple of 256), as llama.cpp's
    reference quantizer writes it: per 256 weights an fp16 ``d``, per 16 an int8 scale ``s``
    (``s·d`` fitted by least squares), 6-bit codes ``q`` with value ``(q - 32)·s·d``."""
    rows, cols = w.shape
    nb = _check("q6_k", cols)
    step = max(1, (1 << 18) // cols)        # rows per chunk: bounded temporaries, cache-sized
    if rows > step:
        return np.concatenate([encode_q6_k(w[i:i + step]) for i in range(0, rows, step)])
    x = np.ascontiguousarray(w, dtype=np.float32).reshape(rows * nb, 16, 16)   # super-block, sub-block
    sub, L = _q6_k_subblock_scales(x.reshape(-1, 16))
    sub, L = sub.reshape(rows * nb, 16), L.reshape(rows * nb, 16, 16)
    pick = np.abs(sub).argmax(axis=1)
    max_scale = np.take_along_axis(sub, pick[:, None], axis=1)[:, 0]
    live = np.abs(max_scale) >= np.float32(1e-15)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(live, np.float32(-128) / max_scale, np.float32(0)).astype(np.float32)
        d = np.where(live, np.float32(1) / iscale, np.float32(0)).astype(np.float16)
        sc = np.minimum(127, np.rint(iscale[:, None] * sub)).astype(np.int8)
        dj = d.astype(np.float32)[:, None] * sc.astype(np.float32)            # [blocks, 16]
        q = np.clip(np.rint(x / dj[:, :, None]), -32, 31) + 32
    # a sub-block whose scale rounds to 0 keeps make_qx_quants' codes (they decode to 0 anyway)
    L = np.where((dj != 0)[:, :, None], q, L).astype(np.uint8)
    L[~live] = 0
    sc[~live] = 0
    L = L.reshape(rows * nb, 2, 4, 32)       # half of 128, quarter j (offset 32·j), lane l
    ql = np.concatenate([(L[:, :, 0] & 15) | ((L[:, :, 2] & 15) << 4),
                         (L[:, :, 1] & 15) | ((L[:, :, 3] & 15) << 4)], axis=2)      # [blocks, 2, 64]
    qh = (L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4) | ((L[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8),
                          _d_bytes(d[:, None]).reshape(-1, 2)], axis=1)
    return out.reshape(rows, nb * 210)


def decode_q6_k(raw: np.ndarray, cols: int) -> np.ndarray:
    nb = _check("q6_k", cols)
    rows = raw.shape[0]
    blk = raw.reshape(rows * nb, 210)
    ql = blk[:, :128].reshape(-1, 2, 2, 32)             # half, low/high 32 bytes, lane
    qh = blk[:, 128:192].reshape(-1, 2, 1, 32)
    sc = np.ascontiguousarray(blk[:, 192:208]).view(np.int8).astype(np.float32)
    d = _d_from(blk[:, 208:210])
    lo = np.stack([ql[:, :, 0] & 15, ql[:, :, 1] & 15, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3
    q = (lo | (hi << 4)).astype(np.float32).reshape(-1, 16, 16) - 32
    return (q * (d[:, None] * sc)[:, :, None]).reshape(rows, cols)


DECODERS = {"q1_0": decode_q1_0, "q2_0": decode_q2_0, "tq2_0": decode_tq2_0,
            "q4_0": decode_q4_0, "q8_0": decode_q8_0, "q6_k": decode_q6_k}


def quantize_dense(w: np.ndarray, name: str) -> np.ndarray:
    """A float matrix in a lossy block type (for embeddings/head; ``--embed-type``):
    q8_0/q4_0 by the ``gguf`` package's quantizers (llama.cpp's reference rounding), q6_k
    by :func:`encode_q6_k` (the same), q1_0 by sign and the block's mean |w|."""
    rows, cols = w.shape
    w = w.astype(np.float32)
    if not np.isfinite(w).all():
        raise ValueError(f"cannot quantize a tensor with non-finite values to {name}")
    if name == "q6_k":
        return encode_q6_k(w)
    if name == "q1_0":
        nb = _check("q1_0", cols)
        d = np.abs(w.reshape(rows, nb, 128)).mean(axis=2).astype(np.float16)
        return encode_q1_0(np.packbits(w >= 0, axis=1, bitorder="little"), d, cols)
    if name in ("q8_0", "q4_0"):
        from gguf import GGMLQuantizationType, quants

        _check(name, cols)
        return quants.quantize(w, GGMLQuantizationType[name.upper()])
    raise ValueError(f"cannot quantize a dense tensor to {name}")
