"""The C++ CPU kernels equal the pure-torch reference (every ISA path, dtype, shape, layout)."""
from __future__ import annotations

import pytest
import torch

from onebit.kernels.reference import binary_linear_ref, ternary_linear_ref

from ._cases import assert_close, binary_layer, make_x, ternary_layer

NEVER = 1 << 40
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2}
# (out, in): in not a multiple of 8 / 32 / 16, tiny, and one realistic width
SHAPES = [(37, 172), (13, 9), (21, 100), (64, 1024)]


def test_isa_detected(mod):
    assert mod.best_isa() in (0, 1, 2)


@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_binary_matches_reference(mod, isa, dtype, shape):
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f)
    for batch in (1, 3, 16, 64):
        x = make_x(batch, in_f, dtype)
        ref = binary_linear_ref(x, p, g, h, in_f)
        assert_close(mod.binary_linear(x, p, g, h, in_f, ISAS[isa], NEVER, 0), ref)


@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ternary_matches_reference(mod, isa, dtype, shape):
    out_f, in_f = shape
    for per_row in (True, False):
        p, scale = ternary_layer(out_f, in_f, per_row)
        for batch in (1, 3, 16):
            x = make_x(batch, in_f, dtype)
            ref = ternary_linear_ref(x, p, scale, in_f)
            assert_close(mod.ternary_linear(x, p, scale, in_f, ISAS[isa], NEVER), ref)


@pytest.mark.parametrize("layout", ["3d", "transposed", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layouts(mod, layout, dtype):
    p, g, h = binary_layer(29, 172)
    tp, scale = ternary_layer(29, 172)
    x = make_x(5, 172, dtype, layout)
    assert_close(mod.binary_linear(x, p, g, h, 172, -1, NEVER, 0), binary_linear_ref(x, p, g, h, 172))
    assert_close(mod.ternary_linear(x, tp, scale, 172, -1, NEVER), ternary_linear_ref(x, tp, scale, 172))


@pytest.mark.parametrize("algo", [1, 2, 3, 4, 5], ids=["lut", "kmask", "psum", "shift", "bf16dp"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_alternative_algorithms(mod, algo, dtype):
    p, g, h = binary_layer(37, 172)
    for batch in (1, 3):
        x = make_x(batch, 172, dtype)
        assert_close(mod.binary_linear(x, p, g, h, 172, -1, NEVER, algo), binary_linear_ref(x, p, g, h, 172))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_path(mod, dtype):
    """mm_threshold=1: expand the packed weight in blocks and call BLAS."""
    p, g, h = binary_layer(1100, 172)  # more rows than one expansion block
    tp, scale = ternary_layer(37, 172)
    x = make_x(4, 172, dtype, "transposed")
    assert_close(mod.binary_linear(x, p, g, h, 172, -1, 1, 0), binary_linear_ref(x, p, g, h, 172))
    assert_close(mod.ternary_linear(x, tp, scale, 172, -1, 1), ternary_linear_ref(x, tp, scale, 172))


def test_bad_input_is_an_error(mod):
    p, g, h = binary_layer(8, 16)
    with pytest.raises(RuntimeError, match="in_features"):
        mod.binary_linear(torch.randn(2, 15), p, g, h, 15 + 8, -1, NEVER, 0)
    with pytest.raises(RuntimeError, match="uint8"):
        mod.binary_linear(torch.randn(2, 16), p.int(), g, h, 16, -1, NEVER, 0)


def test_empty_batch(mod):
    p, g, h = binary_layer(8, 16)
    y = mod.binary_linear(torch.randn(0, 16), p, g, h, 16, -1, NEVER, 0)
    assert y.shape == (0, 8)


def test_psum_exact_for_large_mean(mod):
    """The masked-sum path centres x, so inputs with a large common offset stay accurate."""
    p, g, h = binary_layer(64, 1001)
    x = torch.randn(3, 1001) + 50.0
    ref = binary_linear_ref(x.double(), p, g.double(), h.double(), 1001).float()  # fp64 truth
    for algo in (0, 3, 5):
        assert_close(mod.binary_linear(x, p, g, h, 1001, -1, NEVER, algo), ref)
