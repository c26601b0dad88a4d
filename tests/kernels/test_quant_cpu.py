"""The C++ quant_linear / block_sign_linear kernels (kernels/cpu/quant_cpu.cpp) equal the pure-torch
reference: every ISA path, bits 2/4/8, symmetric and asymmetric (uint8 and float zeros), scales per
tensor / channel / group, fp32/bf16/fp16, odd shapes, the GEMV and the GEMM path."""
from __future__ import annotations

import pytest
import torch

from onebit.formats.packing import pack, pack_signs
from onebit.kernels.cpu import loader
from onebit.kernels.reference import block_sign_linear_ref, quant_linear_ref

from ._cases import assert_close, make_x

NEVER = 1 << 40
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ISAS = {"scalar": 0, "avx2": 1, "avx512": 2}
# (out, in, group): in not a multiple of the group / of 8 / of 32 / of 64, in < group, out odd;
# group 48 is not a multiple of 32 (the SIMD paths hand it to the scalar one)
SHAPES = [(37, 172, 32), (13, 9, 32), (21, 100, 64), (5, 300, 128), (64, 1024, 128), (7, 200, 48)]
BATCHES = (1, 3, 70)


@pytest.fixture(scope="module")
def ops():
    q = loader.quant_ops()
    if q is None:
        pytest.fail(f"the C++ CPU kernels did not build: {loader.build_error()}")
    return q


def quant_layer(out_f, in_f, bits, group, scales="group", zero="sym", seed=0):
    """Random codes + (scale, zero) laid out as nn.QuantLinear stores them."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2 ** bits, (out_f, in_f), generator=gen, dtype=torch.uint8)
    shape = {"tensor": (1, 1), "channel": (out_f, 1), "group": (out_f, -(-in_f // group))}[scales]
    scale = (torch.rand(shape, generator=gen) * 0.1 + 0.01).half()
    if zero == "sym":
        z = None
    elif zero == "u8":
        z = torch.randint(0, 2 ** bits, shape, generator=gen, dtype=torch.uint8)
    else:  # float zero, not an integer: q - zero is rounded in the activation dtype
        z = torch.rand(shape, generator=gen) * (2 ** bits - 1)
    return pack(q, bits), scale, z, (group if scales == "group" else 0)


def sign_layer(out_f, in_f, group, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=gen)
    scales = (torch.rand(out_f, -(-in_f // group), generator=gen) * 0.1 + 0.01).half()
    return pack_signs(w), scales


def test_isa_detected(ops):
    assert ops.best_isa() in (0, 1, 2)
    assert ops.best_isa() == loader.load().best_isa()  # both sources agree on the ISA


@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quant_linear_matches_reference(ops, isa, dtype, bits):
    for out_f, in_f, group in SHAPES:
        for scales, zero in [("group", "sym"), ("group", "u8"), ("group", "float"), ("channel", "sym"),
                             ("channel", "u8"), ("tensor", "sym")]:
            p, s, z, gs = quant_layer(out_f, in_f, bits, group, scales, zero)
            for batch in BATCHES:
                x = make_x(batch, in_f, dtype)
                ref = quant_linear_ref(x, p, s, z, bits, gs, in_f)
                y = ops.quant_linear(x, p, s, z, bits, gs, in_f, ISAS[isa], NEVER)
                assert_close(y, ref)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_gemv8_batch1_fp32(ops, isa):
    """quant_cpu_gemv8.cpp, the path of one fp32 x row over 8-bit codes (the int8 head of a decode
    step): whole 32-column groups (unrolled), groups of 64 / 128 (looped), uint8 zeros, a last group
    past the row's bytes, non-integer zeros and one group per row (the generic group loop).  x has a
    large common offset: the zero is subtracted before the FMA, so the result stays as close to the
    float64 product as the reference's (no cancellation of sum q·x against z·sum x)."""
    gen = torch.Generator().manual_seed(3)
    for out_f, in_f, group, zero in [(33, 2048, 32, "sym"), (17, 2048, 32, "u8"), (9, 1000, 64, "sym"),
                                     (9, 1024, 128, "u8"), (5, 200, 32, "float"), (7, 576, 0, "sym")]:
        q = torch.randint(0, 256, (out_f, in_f), generator=gen, dtype=torch.uint8)
        ng = -(-in_f // group) if group else 1
        s = (torch.rand(out_f, ng, generator=gen) * 0.1 + 0.01).half()
        z = {"sym": None, "u8": torch.randint(0, 256, (out_f, ng), generator=gen, dtype=torch.uint8),
             "float": torch.rand(out_f, ng, generator=gen) * 255}[zero]
        x = torch.randn(1, in_f, generator=gen) + 20.0
        ref = quant_linear_ref(x, pack(q, 8), s, z, 8, group, in_f)
        y = ops.quant_linear(x, pack(q, 8), s, z, 8, group, in_f, ISAS[isa], NEVER)
        assert_close(y, ref)
        if zero != "float":  # float64 truth: integer codes and zeros, fp16 scales
            zz = torch.full((out_f, ng), 128.0, dtype=torch.float64) if z is None else z.double()
            cols = (torch.arange(in_f) // (group or in_f))
            w = (q.double() - zz[:, cols]) * s.double()[:, cols]
            exact = x.double() @ w.t()
            err = lambda t: ((t.double() - exact).norm() / exact.norm()).item()  # noqa: E731
            assert err(y) <= 2 * err(ref) + 1e-7, (out_f, in_f, group, zero, err(y), err(ref))


@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_block_sign_linear_matches_reference(ops, isa, dtype):
    for out_f, in_f, group in SHAPES + [(9, 200, 8), (11, 576, 128)]:
        p, s = sign_layer(out_f, in_f, group)
        for batch in BATCHES:
            x = make_x(batch, in_f, dtype)
            ref = block_sign_linear_ref(x, p, s, group, in_f)
            assert_close(ops.block_sign_linear(x, p, s, group, in_f, ISAS[isa], NEVER), ref)


@pytest.mark.parametrize("isa", list(ISAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_path(ops, isa, dtype):
    """mm_threshold=1: blocks of dequantized rows and BLAS; more rows than one block."""
    for bits, scales, zero in ((2, "group", "u8"), (4, "group", "float"), (8, "channel", "u8"), (4, "tensor", "sym")):
        p, s, z, gs = quant_layer(1500, 6001, bits, 32, scales, zero)
        x = make_x(3, 6001, dtype, "transposed")
        assert_close(ops.quant_linear(x, p, s, z, bits, gs, 6001, ISAS[isa], 1),
                     quant_linear_ref(x, p, s, z, bits, gs, 6001))
    p, s = sign_layer(1500, 6001, 128)
    x = make_x(3, 6001, dtype)
    assert_close(ops.block_sign_linear(x, p, s, 128, 6001, ISAS[isa], 1),
                 block_sign_linear_ref(x, p, s, 128, 6001))


@pytest.mark.parametrize("layout", ["3d", "transposed", "strided"])
def test_layouts(ops, layout):
    p, s, z, gs = quant_layer(29, 172, 4, 32, "group", "u8")
    x = make_x(5, 172, torch.bfloat16, layout)
    assert_close(ops.quant_linear(x, p, s, z, 4, gs, 172, -1, NEVER), quant_linear_ref(x, p, s, z, 4, gs, 172))
    sp, ss = sign_layer(29, 172, 32)
    assert_close(ops.block_sign_linear(x, sp, ss, 32, 172, -1, NEVER), block_sign_linear_ref(x, sp, ss, 32, 172))


def test_scale_dtypes(ops):
    """fp32 / bf16 scales and float zeros of any dtype are read as they are stored."""
    p, s, z, gs = quant_layer(19, 130, 4, 32, "group", "float")
    x = make_x(2, 130, torch.float32)
    for sd in (torch.float32, torch.bfloat16, torch.float64):
        s2, z2 = s.to(sd), z.to(sd)
        assert_close(ops.quant_linear(x, p, s2, z2, 4, gs, 130, -1, NEVER),
                     quant_linear_ref(x, p, s2, z2, 4, gs, 130))


def test_bad_input_is_an_error(ops):
    p, s, z, gs = quant_layer(8, 64, 4, 32)
    with pytest.raises(RuntimeError, match="in_features"):
        ops.quant_linear(torch.randn(2, 63), p, s, z, 4, gs, 64, -1, NEVER)
    with pytest.raises(RuntimeError, match="columns"):  # 2 groups of 32 stored, group 16 claimed
        ops.quant_linear(torch.randn(2, 64), p, s, z, 4, 16, 64, -1, NEVER)
    with pytest.raises(RuntimeError, match="bits"):
        ops.quant_linear(torch.randn(2, 64), p, s, z, 3, gs, 64, -1, NEVER)


def test_empty_batch(ops):
    p, s = sign_layer(8, 64, 32)
    assert ops.block_sign_linear(torch.randn(0, 64), p, s, 32, 64, -1, NEVER).shape == (0, 8)


@pytest.mark.parametrize("attr", ["QUANT_SOURCE", "QUANT_SIMD_SOURCE", "QUANT_VNNI_SOURCE", "QUANT_GEMV8_SOURCE", "QUANT_HEADER", "PORTABLE_SOURCE",
                                  "AVX2_SOURCE", "AVX512_SOURCE", "I8LUT_SOURCE", "FIXED_SOURCE", "FIXED_AVX2_SOURCE",
                                  "GEMM_SOURCE", "ATTENTION_SOURCE",
                                  "HEADER"])
def test_build_key_hashes_every_file(tmp_path, monkeypatch, attr):
    copy = tmp_path / getattr(loader, attr).name
    copy.write_bytes(getattr(loader, attr).read_bytes())
    monkeypatch.setattr(loader, attr, copy)
    key = loader.build_key()
    copy.write_bytes(copy.read_bytes() + b"\n// changed\n")
    assert loader.build_key() != key
    assert [s.name for s in loader.sources()] == ["onebit_cpu.cpp", "onebit_cpu_portable.cpp", "onebit_cpu_avx2.cpp",
                                                  "onebit_cpu_avx512.cpp", "onebit_cpu_i8lut.cpp", "onebit_cpu_fixed.cpp",
                                                  "onebit_cpu_fixed_avx2.cpp", "onebit_cpu_gemm.cpp",
                                                  "attention_cpu.cpp",
                                                  "quant_cpu.cpp",
                                                  "quant_cpu_simd.cpp", "quant_cpu_vnni.cpp", "quant_cpu_gemv8.cpp"]
