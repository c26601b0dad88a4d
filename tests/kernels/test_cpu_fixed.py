"""The fixed-point exact GEMVs (onebit_cpu_fixed.cpp): x per row in 24-bit fixed point, then
algo=fx (three int8 digit planes, vpdpbusd against the 0/1 bytes of the bits; AVX512-VNNI + VBMI)
or algo=fxlut (16-entry int32 tables per 4 columns looked up by vpermd over a transposed copy of
the bits; AVX-512).  Both sum exact integers, so they give the same bits.  Where the CPU lacks
the ISA they fall back to the fp32 kernels; the tests that need a kernel itself skip there."""
from __future__ import annotations

import pytest
import torch

from onebit.formats.packing import unpack_signs
from onebit.kernels.reference import binary_linear_ref

from ._cases import assert_close, binary_layer, make_x, rel_err

NEVER = 1 << 40
FX, FXLUT, SHIFT, PSUM, TABLE = 10, 11, 4, 3, 7
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
FX_LIMIT = 127 * (65536 + 256 + 1)  # largest |X| of the digit planes (onebit_cpu.h)


@pytest.fixture(scope="module")
def fx_mod(mod):
    if not mod.cpu_flags()["fx"]:
        pytest.skip("this CPU lacks AVX512-VNNI + AVX512-VBMI (algo=fx falls back to the fp32 kernels)")
    return mod


@pytest.fixture(scope="module")
def lut_mod(mod):
    if mod.best_isa() < 2:
        pytest.skip("this CPU lacks AVX-512 (algo=fxlut falls back to the fp32 kernels)")
    return mod


def truth(x, p, g, in_f, h=None):
    """fp64 result on x rounded as the reference rounds x*g (fp32 inputs)."""
    xs = (x * g.to(x.dtype)).double()
    y = xs @ unpack_signs(p, in_f).double().t()
    return y if h is None else y * h.double()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 172), (13, 9), (5, 1), (8, 127), (9, 128), (6, 129), (21, 1001),
                                   (64, 2051)], ids=str)
@pytest.mark.parametrize("algo", [FX, FXLUT], ids=["fx", "fxlut"])
def test_matches_reference_on_odd_shapes(mod, dtype, shape, algo):
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f)
    for batch in (1, 3, 9):
        for layout in ("contiguous", "strided"):
            x = make_x(batch, in_f, dtype, layout)
            assert_close(mod.binary_linear(x, p, g, h, in_f, -1, NEVER, algo), binary_linear_ref(x, p, g, h, in_f))


@pytest.mark.parametrize("shape", [(1, 8), (15, 100), (16, 2048), (63, 129), (64, 1001), (65, 300), (200, 5632)],
                         ids=str)
def test_tables_equal_digit_planes(fx_mod, shape):
    """The same integers summed two ways: fxlut and fx give the same bits (rows past a 64-row unit,
    widths past a 128-column block, every dtype)."""
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f, seed=out_f)
    for dtype in DTYPES:
        x = make_x(3, in_f, dtype)
        assert torch.equal(fx_mod.binary_linear(x, p, g, h, in_f, -1, NEVER, FXLUT),
                           fx_mod.binary_linear(x, p, g, h, in_f, -1, NEVER, FX))


def test_tables_see_an_in_place_change_of_the_weight(lut_mod):
    """fxlut reads a cached transposed copy of the bits: an in-place change makes a new one."""
    p, g, h = binary_layer(96, 300)
    x = make_x(2, 300, torch.float32)
    y0 = lut_mod.binary_linear(x, p, g, h, 300, -1, NEVER, FXLUT)
    p[5:40].bitwise_not_()
    y1 = lut_mod.binary_linear(x, p, g, h, 300, -1, NEVER, FXLUT)
    assert not torch.equal(y0, y1)
    assert_close(y1, binary_linear_ref(x, p, g, h, 300))


def test_as_accurate_as_fp32_on_gaussian_rows(lut_mod):
    """Against the fp64 truth, fixed point is within 2x of the fp32 kernels' own error (not merely
    < 1e-5)."""
    p, g, h = binary_layer(256, 2048)
    x = torch.randn(32, 2048)
    t = truth(x, p, g, 2048, h)
    e_fx = rel_err(lut_mod.binary_linear(x, p, g, h, 2048, -1, NEVER, FXLUT), t)
    e_fp32 = max(rel_err(lut_mod.binary_linear(x, p, g, h, 2048, -1, NEVER, a), t) for a in (SHIFT, PSUM))
    e_ref = rel_err(binary_linear_ref(x, p, g, h, 2048), t)
    assert e_fx <= 2 * max(e_fp32, e_ref), (e_fx, e_fp32, e_ref)


@pytest.mark.parametrize("outlier", [3e3, 1e5, -1e7])
@pytest.mark.parametrize("algo,isa", [(FX, -1), (FXLUT, -1), (FXLUT, 1)], ids=["fx", "fxlut", "fxlut-avx2"])
def test_error_bound_with_outliers(mod, outlier, algo, isa):
    """Per output, |error| <= in_features * (step / 2) + one fp32 rounding, with step <= 2 amax /
    FX_LIMIT: rows whose largest value dwarfs the rest keep their absolute bound.  The last row is
    so small (amax ~ 2^-110) that 1/step is no fp32 number: X is then computed in double, as on the
    scalar path.  isa -1: the CPU's best (AVX-512); 1: AVX2."""
    in_f = 1001
    p, g, _ = binary_layer(64, in_f)
    ones = torch.ones(64, dtype=torch.float16)
    x = torch.randn(5, in_f)
    x[:, 17] = 3e3
    x[1, 500] = outlier
    x[2] = x[2] * 1e-30  # tiny row: the step is a power of two far below fp32's normal range
    x[3] = x[3] * 1e30
    x[4] = x[4] * 1e-37
    if mod.best_isa() < (1 if isa == 1 else 2) or (algo == FX and not mod.cpu_flags()["fx"]):
        pytest.skip("the kernel does not run on this CPU")
    y = mod.binary_linear(x, p, g, ones, in_f, isa, NEVER, algo).double()
    t = truth(x, p, g, in_f)
    amax = (x * g.float()).abs().amax(dim=1, keepdim=True).double()
    bound = in_f * amax / FX_LIMIT + t.abs() * 2.0**-24
    assert ((y - t).abs() <= bound).all()
    assert rel_err(y, t) <= 1e-5


@pytest.mark.parametrize("algo", [FX, FXLUT], ids=["fx", "fxlut"])
def test_nonfinite_and_zero_rows(mod, algo):
    p, g, h = binary_layer(16, 300)
    x = torch.randn(4, 300)
    x[1] = 0.0
    x[2, 7] = float("inf")
    x[3, 9] = float("nan")
    y = mod.binary_linear(x, p, g, h, 300, -1, NEVER, algo)
    ref = binary_linear_ref(x, p, g, h, 300)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert (y[1] == 0).all()
    ok = torch.tensor([True, True, False, False])
    assert_close(y[ok], ref[ok])


@pytest.mark.parametrize("algo", [FX, FXLUT], ids=["fx", "fxlut"])
def test_rows_past_one_block_of_tail_bits(mod, algo):
    """in_features just past a multiple of 128: the last block's bits are partly in the row."""
    for in_f in (136, 250, 257, 383):
        p, g, h = binary_layer(7, in_f, seed=in_f)
        x = make_x(2, in_f, torch.float32)
        assert_close(mod.binary_linear(x, p, g, h, in_f, -1, NEVER, algo), binary_linear_ref(x, p, g, h, in_f))


def test_default_per_vendor(lut_mod):
    """On AVX-512 CPUs other than Intel's, algo 0 (the default) is fxlut for every dtype: the same
    bits as asking for it, batched too with the default threshold (fp32: every batch size; bf16 /
    fp16 below 256 rows).  On Intel the fp32 default stays the masked-sum kernel (psum)."""
    intel = lut_mod.cpu_flags()["intel"]
    p, g, h = binary_layer(40, 333)
    for dtype in DTYPES:
        x = make_x(2, 333, dtype)
        y0 = lut_mod.binary_linear(x, p, g, h, 333, -1, NEVER, 0)
        if not intel:
            assert torch.equal(y0, lut_mod.binary_linear(x, p, g, h, 333, -1, NEVER, FXLUT))
            xb = make_x(300 if dtype == torch.float32 else 70, 333, dtype)
            assert torch.equal(lut_mod.binary_linear(xb, p, g, h, 333, -1, -1, 0),
                               lut_mod.binary_linear(xb, p, g, h, 333, -1, NEVER, FXLUT))
        elif dtype == torch.float32:
            assert torch.equal(y0, lut_mod.binary_linear(x, p, g, h, 333, -1, NEVER, PSUM))


# ------------------------------------------------------------------ fxlut on AVX2 (isa = 1)
AVX2 = 1


@pytest.fixture(scope="module")
def avx2_mod(mod):
    if mod.best_isa() < AVX2:
        pytest.skip("this CPU lacks AVX2")
    return mod


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 172), (13, 9), (5, 1), (8, 127), (9, 128), (33, 96), (21, 1001),
                                   (64, 2051), (70, 300)], ids=str)
def test_avx2_matches_reference_on_odd_shapes(avx2_mod, dtype, shape):
    """Rows past a 32-row unit and a 16-row tile, widths past a 32-column dword and a 128-column
    block, batches on both sides of the row blocks (default threshold: the kernel at every batch)."""
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f)
    for batch in (1, 3, 40):
        for layout in ("contiguous", "strided"):
            x = make_x(batch, in_f, dtype, layout)
            assert_close(avx2_mod.binary_linear(x, p, g, h, in_f, AVX2, -1, FXLUT), binary_linear_ref(x, p, g, h, in_f))


@pytest.mark.parametrize("shape", [(1, 8), (15, 100), (33, 2048), (64, 1001), (100, 5632)], ids=str)
def test_avx2_tables_equal_avx512_tables(lut_mod, shape):
    """The same integers through 3-column (AVX2) and 4-column (AVX-512) tables: the same bits, also
    for a batch that spans several row blocks of the AVX2 kernel."""
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f, seed=in_f)
    for dtype in DTYPES:
        for batch in (1, 2, 20):
            x = make_x(batch, in_f, dtype)
            assert torch.equal(lut_mod.binary_linear(x, p, g, h, in_f, AVX2, -1, FXLUT),
                               lut_mod.binary_linear(x, p, g, h, in_f, 2, NEVER, FXLUT))


def test_avx2_nonfinite_and_zero_rows(avx2_mod):
    """inf / nan anywhere in a row (also in the SIMD body, not only the tail) -> the fp32 kernels."""
    p, g, h = binary_layer(16, 300)
    x = torch.randn(5, 300)
    x[1] = 0.0
    x[2, 7] = float("inf")
    x[3, 9] = float("nan")
    x[4, 299] = float("-inf")
    y = avx2_mod.binary_linear(x, p, g, h, 300, AVX2, -1, FXLUT)
    ref = binary_linear_ref(x, p, g, h, 300)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert (y[1] == 0).all()
    assert_close(y[:2], ref[:2])


def test_avx2_tables_see_an_in_place_change_of_the_weight(avx2_mod):
    p, g, h = binary_layer(96, 300)
    x = make_x(2, 300, torch.float32)
    y0 = avx2_mod.binary_linear(x, p, g, h, 300, AVX2, -1, FXLUT)
    p[5:40].bitwise_not_()
    y1 = avx2_mod.binary_linear(x, p, g, h, 300, AVX2, -1, FXLUT)
    assert not torch.equal(y0, y1)
    assert_close(y1, binary_linear_ref(x, p, g, h, 300))


def test_avx2_default_per_vendor(avx2_mod):
    """On AVX2 (capped here with isa = 1) the default off Intel is fxlut at every batch size, the
    GEMM path included (auto threshold); on Intel the ±1 table kernel (TABLE) below the threshold."""
    intel = avx2_mod.cpu_flags()["intel"]
    p, g, h = binary_layer(40, 333)
    for dtype in DTYPES:
        for batch in (2, 70):
            x = make_x(batch, 333, dtype)
            y0 = avx2_mod.binary_linear(x, p, g, h, 333, AVX2, -1, 0)
            if not intel:
                assert torch.equal(y0, avx2_mod.binary_linear(x, p, g, h, 333, AVX2, NEVER, FXLUT))
            elif batch == 2:
                assert torch.equal(y0, avx2_mod.binary_linear(x, p, g, h, 333, AVX2, NEVER, TABLE))
