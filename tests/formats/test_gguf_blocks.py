"""llama.cpp block encoders: exact round trips, and agreement with the gguf package's decoders."""
from __future__ import annotations

import numpy as np
import pytest

from onebit.formats import gguf_blocks as gb


def _rng():
    return np.random.default_rng(0)


def _scales(rows, nb):
    return (_rng().random((rows, nb)) + 0.1).astype(np.float16)


def test_q1_0_round_trip_keeps_onebit_bit_order():
    rows, cols = 3, 256
    signs = _rng().integers(0, 2, (rows, cols)).astype(bool)
    d = _scales(rows, cols // 128)
    packed = np.packbits(signs, axis=1, bitorder="little")   # onebit's order: LSB first, 1 = +
    raw = gb.encode_q1_0(packed, d, cols)
    assert raw.shape == (rows, 2 * 18)
    want = np.where(signs, 1.0, -1.0) * np.repeat(d.astype(np.float32), 128, axis=1)
    np.testing.assert_array_equal(gb.decode_q1_0(raw, cols), want)


@pytest.mark.parametrize("name,lo,hi", [("q2_0", -1, 2), ("tq2_0", -1, 1), ("q4_0", -8, 7), ("q8_0", -128, 127)])
def test_integer_types_round_trip(name, lo, hi):
    block = gb.TYPES[name][1]
    rows, cols = 4, 512
    v = _rng().integers(lo, hi + 1, (rows, cols))
    d = _scales(rows, cols // block)
    raw = {"q2_0": gb.encode_q2_0, "tq2_0": gb.encode_tq2_0, "q4_0": gb.encode_q4_0,
           "q8_0": gb.encode_q8_0}[name](v, d)
    assert raw.shape == (rows, cols // block * gb.TYPES[name][2])
    want = v * np.repeat(d.astype(np.float32), block, axis=1)
    np.testing.assert_array_equal(gb.DECODERS[name](raw, cols), want)


@pytest.mark.parametrize("name", ["tq2_0", "q4_0", "q8_0"])
def test_decoders_agree_with_the_gguf_package(name):
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    block = gb.TYPES[name][1]
    rows, cols = 3, 512
    lo, hi = {"tq2_0": (-1, 1), "q4_0": (-8, 7), "q8_0": (-128, 127)}[name]
    v = _rng().integers(lo, hi + 1, (rows, cols))
    d = _scales(rows, cols // block)
    raw = {"tq2_0": gb.encode_tq2_0, "q4_0": gb.encode_q4_0, "q8_0": gb.encode_q8_0}[name](v, d)
    ref = quants.dequantize(raw, gguf.GGMLQuantizationType[name.upper()])
    np.testing.assert_array_equal(ref, gb.DECODERS[name](raw, cols))


def test_rows_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="multiple of 128"):
        gb.encode_q1_0(np.zeros((1, 24), np.uint8), np.ones((1, 1), np.float16), 192)
    assert gb.fits("q2_0", 192) and not gb.fits("q1_0", 192) and not gb.fits("tq2_0", 576)


def test_bits_per_weight():
    assert gb.bits_per_weight("q1_0") == 1.125
    assert gb.bits_per_weight("q2_0") == 2.25
    assert gb.bits_per_weight("tq2_0") == 2.0625


def test_quantize_dense_q1_0_uses_block_absmean():
    w = np.array([[1.0, -3.0] * 64], dtype=np.float32)
    out = gb.decode_q1_0(gb.quantize_dense(w, "q1_0"), 128)
    np.testing.assert_allclose(out, np.sign(w) * 2.0)


def _q6_k_reference_row(x: np.ndarray) -> np.ndarray:
    """A direct scalar transcription of llama.cpp's quantize_row_q6_K_ref on one super-block,
    values only (what llama.cpp's dequantization gives back), to check the vectorised encoder."""
    f = np.float32
    scales, L = np.zeros(16, f), np.zeros(256, np.int64)
    for ib in range(16):
        s = x[16 * ib: 16 * ib + 16]
        mx = s[np.argmax(np.abs(s))]
        if abs(mx) < f(1e-15):
            continue
        best_l, best_scale, best = None, f(0), None
        for k in [0] + [k for k in range(-9, 10) if k]:
            iscale = f(-(f(32) + f(0.1) * f(k)) / mx)
            lv = np.clip(np.rint(iscale * s), -32, 31)
            sumlx, suml2 = f(0), f(0)
            for i in range(16):
                sumlx = f(sumlx + s[i] * s[i] * s[i] * f(lv[i]))
                suml2 = f(suml2 + s[i] * s[i] * f(lv[i]) * f(lv[i]))
            if k == 0:
                best_l, best_scale = lv, f(sumlx / suml2) if suml2 else f(0)
                best = f(best_scale * sumlx)
            elif suml2 > 0 and f(sumlx * sumlx) > f(best * suml2):
                best_l, best_scale = lv, f(sumlx / suml2)
                best = f(best_scale * sumlx)
        scales[ib], L[16 * ib: 16 * ib + 16] = best_scale, best_l
    max_scale = scales[np.argmax(np.abs(scales))]
    if abs(max_scale) < f(1e-15):
        return np.zeros(256, f)
    iscale = f(f(-128) / max_scale)
    d = np.float16(f(1) / iscale).astype(f)
    sc = np.minimum(127, np.rint(iscale * scales))
    out = np.zeros(256, f)
    for j in range(16):
        dj = f(d * f(sc[j]))
        if dj:
            q = np.clip(np.rint(x[16 * j: 16 * j + 16] / dj), -32, 31)
            out[16 * j: 16 * j + 16] = q * dj
    return out


def _q6_k_input(rows=6, cols=512):
    w = (_rng().standard_normal((rows, cols)) * 0.02).astype(np.float32)
    w[0, :256] = 0          # an all-zero super-block
    w[1, 16:32] = 0         # an all-zero sub-block
    w[2, 7] = 1.5           # an outlier: other sub-blocks' scales round small
    w[3, :256] = -w[3, :256]
    return w


def test_q6_k_decodes_as_the_gguf_package_does():
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    w = _q6_k_input()
    raw = gb.encode_q6_k(w)
    assert raw.shape == (6, 2 * 210) and raw.dtype == np.uint8
    ref = quants.dequantize(raw, gguf.GGMLQuantizationType.Q6_K).reshape(6, 512)
    np.testing.assert_array_equal(gb.decode_q6_k(raw, 512), ref)
    # and random bytes (any code, scale and sign) decode alike: the layout, not just our encoder's output
    rnd = _rng().integers(0, 256, (3, 2 * 210)).astype(np.uint8)
    rnd[:, 208::210] = 0x00
    rnd[:, 209::210] = 0x1c                      # keep d finite: fp16 0x1c00 = 2^-8
    ref = quants.dequantize(rnd, gguf.GGMLQuantizationType.Q6_K).reshape(3, 512)
    np.testing.assert_array_equal(gb.decode_q6_k(rnd, 512), ref)


def test_q6_k_round_trip_is_llama_cpp_reference_rounding():
    w = _q6_k_input()
    dec = gb.decode_q6_k(gb.encode_q6_k(w), 512)
    want = np.stack([np.concatenate([_q6_k_reference_row(r[:256]), _q6_k_reference_row(r[256:])]) for r in w])
    np.testing.assert_array_equal(dec, want)
    assert not dec[0, :256].any() and not dec[1, 16:32].any()
    err = np.sqrt(((dec - w)[4:] ** 2).mean()) / w[4:].std()
    assert 0 < err < 0.03, err          # ~6 bits: a few percent of the spread
    # codes exactly on the grid come back exactly (re-encoding is a fixed point)
    np.testing.assert_array_equal(gb.decode_q6_k(gb.encode_q6_k(dec), 512), dec)


def test_q6_k_chunks_rows_without_changing_bytes():
    w = (_rng().standard_normal((1100, 256)) * 0.02).astype(np.float32)   # > one chunk of rows
    np.testing.assert_array_equal(gb.encode_q6_k(w), np.concatenate([gb.encode_q6_k(w[:500]),
                                                                     gb.encode_q6_k(w[500:])]))


def test_q6_k_refuses_rows_that_do_not_fit_and_non_finite_input():
    assert gb.bits_per_weight("q6_k") == 6.5625 and not gb.fits("q6_k", 576) and gb.fits("q6_k", 768)
    with pytest.raises(ValueError, match="multiple of 256"):
        gb.encode_q6_k(np.zeros((2, 192), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        gb.quantize_dense(np.full((1, 256), np.nan, np.float32), "q6_k")
