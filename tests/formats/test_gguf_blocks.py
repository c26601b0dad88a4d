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
