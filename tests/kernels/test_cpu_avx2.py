"""The AVX2 GEMV variants, the int8-activation path and the AVX2 GEMM (batched) path of the C++
CPU kernels, on odd shapes, every ISA and dtype (issue 19).

Exact paths must match the pure-torch reference within the backends' tolerance (_cases.TOL).
The int8-activation path (algo ``i8``) is not exact: it is checked against the same int8 math
written in torch (``i8_reference``), and its error against the exact reference is bounded.
"""
from __future__ import annotations

import pytest
import torch

from onebit.formats.packing import unpack_signs
from onebit.kernels import dispatch
from onebit.kernels.reference import binary_linear_ref, ternary_linear_ref

from ._cases import assert_close, binary_layer, make_x, rel_err, ternary_layer

NEVER = 1 << 40
AUTO = -1
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2}
ALGO = dispatch._ALGO
# in_features not a multiple of 8 / 32 / 64 / 128 / 256 (and one that is: 512); out odd
SHAPES = [(37, 172), (13, 9), (65, 1031), (7, 300), (6, 512)]
BATCHES = (1, 3, 70)
QB = 128  # the i8 path's block of activations


@pytest.mark.parametrize("algo", ["simd", "table", "xor", "blend"])
@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_exact_gemv_paths(mod, algo, isa, dtype, shape):
    """Direct kernels (no GEMM): the AVX2 table / xor / blend variants (other ISAs run their own
    default for these codes) equal the reference."""
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f)
    for batch in BATCHES:
        x = make_x(batch, in_f, dtype)
        y = mod.binary_linear(x, p, g, h, in_f, ISAS[isa], NEVER, ALGO[algo])
        assert_close(y, binary_linear_ref(x, p, g, h, in_f))


@pytest.mark.parametrize("thr", [1, 4, AUTO], ids=["gemm", "gemm-from-4", "auto"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(1100, 300)], ids=str)
def test_avx2_gemm_path(mod, thr, dtype, shape):
    """AVX2 batched path: weight tiles expanded to ±1 fp32 + a GEMM written in place (auto: the
    default, from AVX2_MM_THRESHOLD rows on Intel; elsewhere fxlut at every batch size); 1100 rows
    spans more than one tile at small batch."""
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f, seed=3)
    for batch in BATCHES + (200,):
        x = make_x(batch, in_f, dtype, "transposed" if batch == 3 else "contiguous")
        y = mod.binary_linear(x, p, g, h, in_f, ISAS["avx2"], thr, 0)
        assert_close(y, binary_linear_ref(x, p, g, h, in_f))


@pytest.mark.parametrize("thr", [1, AUTO], ids=["gemm", "auto"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(1100, 300)], ids=str)
def test_avx512_gemm_path(mod, thr, dtype, shape):
    """AVX-512 batched path: blocks of rows expanded to ±1 in the input dtype by masked blends
    (odd byte counts, tails of 1-3 bytes) + one GEMM per block; auto: from 32 fp32 / 8 bf16-fp16
    rows, so the batches below run both sides of the crossover; 1100 rows: two blocks."""
    if mod.best_isa() < ISAS["avx512"]:
        pytest.skip("this CPU has no AVX-512")
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f, seed=8)
    for batch in BATCHES + (8, 40, 200):
        x = make_x(batch, in_f, dtype, "transposed" if batch == 3 else "contiguous")
        y = mod.binary_linear(x, p, g, h, in_f, ISAS["avx512"], thr, 0)
        assert_close(y, binary_linear_ref(x, p, g, h, in_f))


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ternary_auto_gemm_path(mod, isa, dtype):
    """Ternary batched input: the direct kernel below, table unpack + BLAS from 64 fp32 / 32
    bf16-fp16 rows (auto), on both sides of the crossover and with more rows than one block."""
    if mod.best_isa() < ISAS[isa]:
        pytest.skip(f"this CPU has no {isa}")
    for out_f, in_f in [(37, 172), (1100, 301)]:
        tp, scale = ternary_layer(out_f, in_f)
        for batch in (1, 31, 33, 70):
            x = make_x(batch, in_f, dtype)
            assert_close(mod.ternary_linear(x, tp, scale, in_f, ISAS[isa], AUTO),
                         ternary_linear_ref(x, tp, scale, in_f))


def test_avx2_gemm_small_tiles(mod, monkeypatch):
    """ONEBIT_CPU_TILE_BYTES (measurement knob) forces many small tiles: same result."""
    monkeypatch.setenv("ONEBIT_CPU_TILE_BYTES", "1")
    p, g, h = binary_layer(101, 300, seed=4)
    x = make_x(9, 300, torch.float32)
    assert_close(mod.binary_linear(x, p, g, h, 300, ISAS["avx2"], 1, 0), binary_linear_ref(x, p, g, h, 300))


# ---------------------------------------------------------------------------------------------
def i8_reference(x: torch.Tensor, packed: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
                 in_f: int) -> torch.Tensor:
    """The int8-activation math in torch: xs = x*g (rounded to x.dtype, as the reference); per
    block of 128 columns a = max|xs|/127; per row S = max a / 255; u = min(255, ceil(a / S)) (0
    where a = 0); s = S*u; q = round_half_even(xs / s) (0 where s = 0);
    y = round(sum_b s_b * (q_b . w_b)) * h, integer dot products exact (fp64)."""
    dtype = x.dtype
    xs = (x * g.to(dtype)).float().reshape(-1, in_f)
    nb = -(-in_f // QB)
    xb = torch.nn.functional.pad(xs, (0, nb * QB - in_f)).view(-1, nb, QB)
    a = xb.abs().amax(-1, keepdim=True) / 127
    S = a.amax(1, keepdim=True) / 255
    u = torch.where(a > 0, torch.ceil(a / torch.where(S > 0, S, 1)).clamp(max=255), 0)
    s = S * u
    assert (s >= a * (1 - 1e-6)).all()
    q = torch.where(s > 0, torch.round(xb / torch.where(s > 0, s, 1)), 0).clamp(-127, 127)
    w = torch.nn.functional.pad(unpack_signs(packed, in_f, torch.float64), (0, nb * QB - in_f))
    dots = torch.einsum("mbk,nbk->mnb", q.double(), w.view(-1, nb, QB))  # exact integers
    acc = (dots * s.double().squeeze(-1)[:, None, :]).sum(-1)
    y = acc.float().to(dtype) * h.to(dtype)
    return y.reshape(*x.shape[:-1], -1)


def assert_i8_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    """Same int8 math: fp32 within 1e-5 relative (only the fp32 summation order differs); bf16 /
    fp16 outputs may differ where the fp32 sums differ in their last bits and round to the
    neighbouring value (then times h, rounded again): at most 2 ulps, nowhere more."""
    assert y.shape == ref.shape and y.dtype == ref.dtype
    if y.dtype == torch.float32:
        assert rel_err(y, ref) <= 1e-5, rel_err(y, ref)
        return
    ulp = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}[y.dtype]
    d = (y.double() - ref.double()).abs()
    big = torch.maximum(y.double().abs(), ref.double().abs())
    assert (d <= 2 * ulp * big + 1e-6 * big.max()).all(), d.max().item()
    assert rel_err(y, ref) <= 1e-3


@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_i8_matches_int8_reference(mod, isa, dtype, shape):
    out_f, in_f = shape
    p, g, h = binary_layer(out_f, in_f, seed=5)
    for batch in BATCHES:
        x = make_x(batch, in_f, dtype)
        y = mod.binary_linear(x, p, g, h, in_f, ISAS[isa], NEVER, ALGO["i8"])
        assert_i8_close(y, i8_reference(x, p, g, h, in_f))


@pytest.mark.parametrize("isa", list(ISAS))
def test_i8_edge_inputs(mod, isa):
    """Zero blocks (s = 0), a large common offset (2P - C cancels), strided x."""
    p, g, h = binary_layer(33, 1031, seed=6)
    x = torch.randn(4, 1031)
    x[1] = 0.0
    x[2, :QB] = 0.0
    x[3] += 50.0
    y = mod.binary_linear(x, p, g, h, 1031, ISAS[isa], NEVER, ALGO["i8"])
    ref = i8_reference(x, p, g, h, 1031)
    assert (y[1] == 0).all()
    assert rel_err(y, ref) <= 1e-4
    xt = make_x(5, 1031, torch.float32, "strided")
    assert rel_err(mod.binary_linear(xt, p, g, h, 1031, ISAS[isa], NEVER, ALGO["i8"]),
                   i8_reference(xt, p, g, h, 1031)) <= 1e-5


def test_i8_error_vs_exact(mod):
    """What int8 activations cost (documented in docs/kernels.md): ~0.7 % relative error for
    Gaussian x; bounded here at 2 %, and clearly non-zero (the path is not the exact one)."""
    p, g, h = binary_layer(256, 2048, seed=7)
    x = make_x(8, 2048, torch.float32)
    e = rel_err(mod.binary_linear(x, p, g, h, 2048, -1, NEVER, ALGO["i8"]), binary_linear_ref(x, p, g, h, 2048))
    assert 1e-4 < e < 2e-2, e


def test_dispatch_knows_the_new_algos(monkeypatch):
    for name in ("i8", "table", "xor", "blend"):
        monkeypatch.setenv("ONEBIT_CPU_ALGO", name)
        assert dispatch.cpu_params()[2] == ALGO[name]
    monkeypatch.delenv("ONEBIT_CPU_ALGO")
    monkeypatch.delenv("ONEBIT_CPU_MM_THRESHOLD", raising=False)
    assert dispatch.cpu_params()[1] == AUTO  # the kernel picks the GEMM crossover per ISA


def test_op_with_i8_env(mod, monkeypatch):
    """Through torch.ops (what bench/kernel_speed.py times): ONEBIT_CPU_ISA=avx2 ONEBIT_CPU_ALGO=i8."""
    import onebit.kernels  # noqa: F401  (registers the op and the CPU backend)

    monkeypatch.setenv("ONEBIT_CPU_ISA", "avx2")
    monkeypatch.setenv("ONEBIT_CPU_ALGO", "i8")
    p, g, h = binary_layer(19, 300, seed=8)
    x = make_x(3, 300, torch.bfloat16)
    assert_i8_close(torch.ops.onebit.binary_linear(x, p, g, h, 300), i8_reference(x, p, g, h, 300))


def test_i8_table_kernel_batches_and_cache(mod):
    """AVX2 int8 path: the table kernel over the cached 32-row transposed copy, at batch sizes
    past the GEMM crossover and past one L2 block of tables (K = 1031: 56 rows per block); the
    cache follows an in-place change of the weight (version counter) and a new weight."""
    p, g, h = binary_layer(45, 1031, seed=9)
    for batch in (1, 16, 70):
        x = make_x(batch, 1031, torch.float32)
        assert_i8_close(mod.binary_linear(x, p, g, h, 1031, ISAS["avx2"], AUTO, ALGO["i8"]),
                        i8_reference(x, p, g, h, 1031))
    x = make_x(2, 1031, torch.float32)
    q, _, _ = binary_layer(45, 1031, seed=10)
    p.copy_(q)  # same storage, new bits
    assert_i8_close(mod.binary_linear(x, p, g, h, 1031, ISAS["avx2"], NEVER, ALGO["i8"]),
                    i8_reference(x, q, g, h, 1031))
    r, _, _ = binary_layer(45, 1031, seed=11)
    assert_i8_close(mod.binary_linear(x, r, g, h, 1031, ISAS["avx2"], NEVER, ALGO["i8"]),
                    i8_reference(x, r, g, h, 1031))


def test_i8_table_kernel_takes_inference_tensors(mod):
    """A model loaded under torch.inference_mode has inference tensors, which have no version counter
    (the table kernel's cache key): it used to raise 'Inference tensors do not track version counter'."""
    p, g, h = binary_layer(40, 300)
    x = make_x(2, 300, torch.float32)
    want = mod.binary_linear(x, p, g, h, 300, ISAS["avx2"], NEVER, ALGO["i8"])
    with torch.inference_mode():
        pi, gi, hi, xi = p.clone(), g.clone(), h.clone(), x.clone()
        assert pi.is_inference()
        y = mod.binary_linear(xi, pi, gi, hi, 300, ISAS["avx2"], NEVER, ALGO["i8"])
        assert torch.equal(y, want)
        assert torch.equal(mod.binary_linear(xi, pi, gi, hi, 300, ISAS["avx2"], NEVER, ALGO["i8"]), want)  # cached


@pytest.mark.parametrize("isa", list(ISAS))
def test_i8_block_scales_span_the_row(mod, isa):
    """Blocks of very different size in one row: the integer block scales u_b run from 255 (the
    largest block) down to 1 (blocks under 1/255 of it, whose step is then the row's S): the
    kernel follows the same u_b (a kernel with free float block scales would differ here), and the
    error against the exact result stays small because the small blocks add little."""
    in_f = 9 * QB + 5
    p, g, h = binary_layer(17, in_f, seed=8)
    g = torch.ones_like(g)
    x = torch.randn(3, in_f)
    scale = torch.tensor([1e3, 1.0, 3e-3, 0.5, 20.0, 1e-6, 7.0, 2e-2, 1.0, 4.0])
    x = x * scale.repeat_interleave(QB)[:in_f]
    y = mod.binary_linear(x, p, g, h, in_f, ISAS[isa], NEVER, ALGO["i8"])
    ref = i8_reference(x, p, g, h, in_f)
    assert_i8_close(y, ref)
    assert rel_err(y, binary_linear_ref(x, p, g, h, in_f)) < 0.02
