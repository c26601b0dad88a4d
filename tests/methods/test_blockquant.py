"""Embedding block quantization math: llama.cpp's rounding bit for bit, bits per weight, bad input."""
import numpy as np
import pytest
import torch

from onebit.formats import gguf_blocks as gb
from onebit.methods.blockquant import (bits_per_weight, check_kind, dequantize_rows, quantize_rows,
                                       signed_values)


def _table(rows=97, cols=256, scale=0.05):
    w = torch.randn(rows, cols) * scale
    w[0, :32] = 0                      # an all-zero group: scale 0, values 0
    w[1, 5] = -w[1].abs().max() * 3    # a negative extreme (Q4_0 maps it to -8)
    w[2, 40] = w[2].abs().max() * 3    # a positive extreme
    w[3, :32] = 0.25                   # ties
    return w


@pytest.mark.parametrize("kind,ggml", [("int8", "Q8_0"), ("int4", "Q4_0")])
@pytest.mark.parametrize("scale", [1e-3, 0.05, 30.0])
def test_equals_gguf_reference_quantizer(kind, ggml, scale):
    from gguf import GGMLQuantizationType as T, quants

    w = _table(scale=scale)
    codes, d = quantize_rows(w, kind)
    raw = quants.quantize(w.numpy(), T[ggml])
    # the same bytes as llama.cpp's reference quantizer, through the exact encoder
    enc = gb.encode_q8_0 if kind == "int8" else gb.encode_q4_0
    np.testing.assert_array_equal(enc(signed_values(codes, kind).numpy(), d.numpy()), raw)
    np.testing.assert_array_equal(dequantize_rows(codes, d, kind, 32).numpy(),
                                  quants.dequantize(raw, T[ggml]))


def test_q1_is_sign_and_block_absmean():
    w = _table(cols=320)   # 2 full blocks of 128 and a short one of 64
    codes, d = quantize_rows(w, "q1")
    assert d.shape == (97, 3) and d.dtype == torch.float16
    assert torch.equal(codes, (w >= 0).to(torch.uint8))
    want = torch.stack([w[:, :128].abs().mean(1), w[:, 128:256].abs().mean(1), w[:, 256:].abs().mean(1)], 1)
    torch.testing.assert_close(d.float(), want.half().float())
    deq = dequantize_rows(codes, d, "q1", 128)
    assert torch.equal(deq.abs()[:, 256:], d[:, 2:].float().expand(97, 64))
    # Q1_0 decodes the same bytes to the same table (rows of a multiple of 128)
    codes, d = quantize_rows(w[:, :256], "q1")
    packed = np.packbits(codes.numpy().astype(bool), axis=1, bitorder="little")
    np.testing.assert_array_equal(gb.decode_q1_0(gb.encode_q1_0(packed, d.numpy(), 256), 256),
                                  dequantize_rows(codes, d, "q1", 128).numpy())


@pytest.mark.parametrize("kind", ["int8", "int4", "int2", "q1"])
def test_error_shrinks_with_bits_and_short_last_group(kind):
    w = torch.randn(50, 100)   # 100 = 3 groups of 32 + 4
    group = 32 if kind != "q1" else 64
    codes, d = quantize_rows(w, kind, group)
    assert d.shape == (50, -(-100 // group))
    err = dequantize_rows(codes, d, kind, group) - w
    rel = float(err.norm() / w.norm())
    assert rel < {"int8": 0.01, "int4": 0.15, "int2": 0.6, "q1": 0.7}[kind]
    assert int(codes.max()) < 2 ** check_kind(kind, group)


def test_int2_uses_four_levels():
    codes, d = quantize_rows(torch.randn(8, 64), "int2")
    assert set(codes.unique().tolist()) <= {0, 1, 2, 3}


def test_bits_per_weight():
    assert bits_per_weight("int8", 32, 576) == 8.5
    assert bits_per_weight("int4", 32, 576) == 4.5
    assert bits_per_weight("int2", 32, 576) == 2.5
    assert bits_per_weight("q1", 128, 512) == 1.125
    assert bits_per_weight("q1", 128, 576) == pytest.approx(1 + 5 * 16 / 576)


@pytest.mark.parametrize("kind,group,msg", [("int9", 32, "unknown embedding quantization"),
                                            ("int4", 0, "positive integer"),
                                            ("q1", 12, "multiple of 8"),
                                            ("int4", 512, "larger than the row")])
def test_bad_input_one_line(kind, group, msg):
    with pytest.raises(ValueError, match=msg) as e:
        quantize_rows(torch.zeros(4, 256), kind, group)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(torch.zeros(4), "int8")
