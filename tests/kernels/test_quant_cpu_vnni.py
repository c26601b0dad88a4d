"""quant_linear with int8 activations (``ONEBIT_CPU_ALGO=i8``, quant_cpu_vnni.cpp): the VNNI GEMV
of symmetric 4/8-bit codes with fp16 scales against the same int8 math written in torch, and its
error against the exact op bounded; every other layout / ISA keeps the exact kernels."""
from __future__ import annotations

import pytest
import torch

from onebit.formats.packing import unpack
from onebit.kernels import dispatch
from onebit.kernels.reference import quant_linear_ref

from ._cases import assert_close, make_x, rel_err
from .test_quant_cpu import ops, quant_layer  # noqa: F401  (ops: the module's fixture)

I8 = dispatch._ALGO["i8"]
NEVER = 1 << 40
QB = 128  # the block of activations


def vnni(ops) -> bool:
    return ops.best_isa() == 2 and ops.has_vnni()


def i8_reference(x, packed, scale, bits, group, in_f):
    """x per block of 128 columns: s = max|x|/127, q = round_half_even(x / s) (0 where s = 0);
    y = sum over blocks of s * (q . w) with w = (code - 2**(bits-1)) * d (fp64, exact products)."""
    dtype = x.dtype
    xs = x.float().reshape(-1, in_f)
    nc = -(-in_f // QB)
    xb = torch.nn.functional.pad(xs, (0, nc * QB - in_f)).view(-1, nc, QB)
    s = xb.abs().amax(-1, keepdim=True) / 127
    q = torch.where(s > 0, torch.round(xb / torch.where(s > 0, s, 1)), 0).clamp(-127, 127)
    codes = unpack(packed, bits, in_f).double() - 2 ** (bits - 1)
    d = scale.double()
    d = d.repeat_interleave(group, 1)[:, :in_f] if d.shape[1] > 1 else d.expand(-1, in_f)
    w = torch.nn.functional.pad(codes * d, (0, nc * QB - in_f)).view(-1, nc, QB)
    dots = torch.einsum("mck,nck->mnc", q.double(), w)
    y = (dots * s.double().squeeze(-1)[:, None, :]).sum(-1)
    return y.float().to(dtype).reshape(*x.shape[:-1], -1)


SHAPES = [(37, 172, 32), (13, 9, 32), (21, 100, 64), (5, 300, 128), (64, 1024, 32), (9, 2000, 256),
          (33, 2048, 32)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bits", [4, 8])
def test_i8_head_matches_int8_reference(ops, bits, dtype):
    if not vnni(ops):
        pytest.skip("needs AVX512-VNNI")
    for out_f, in_f, group in SHAPES:
        for scales in ("group", "channel"):
            p, s, z, gs = quant_layer(out_f, in_f, bits, group, scales, "sym", seed=in_f)
            for batch in (1, 3):
                x = make_x(batch, in_f, dtype)
                y = ops.quant_linear(x, p, s, z, bits, gs, in_f, 2, NEVER, I8)
                ref = i8_reference(x, p, s, bits, gs or in_f, in_f)
                tol = 1e-5 if dtype == torch.float32 else 1e-2
                assert rel_err(y, ref) <= tol, (out_f, in_f, group, scales, rel_err(y, ref))
                assert rel_err(y, quant_linear_ref(x, p, s, z, bits, gs, in_f)) < 0.03


def test_i8_head_edge_inputs(ops):
    if not vnni(ops):
        pytest.skip("needs AVX512-VNNI")
    p, s, z, gs = quant_layer(19, 1031, 8, 32, seed=3)
    x = torch.randn(4, 1031)
    x[1] = 0.0
    x[2, :QB] = 0.0
    x[3, 5] = 300.0  # one block dominated by an outlier
    y = ops.quant_linear(x, p, s, z, 8, gs, 1031, 2, NEVER, I8)
    assert (y[1] == 0).all()
    assert rel_err(y, i8_reference(x, p, s, 8, 32, 1031)) <= 1e-5


def test_other_layouts_stay_exact(ops):
    """Zero points, non-fp16 scales, odd groups, batches from the GEMM threshold, another ISA and
    the default algo all take the exact kernels."""
    x = make_x(2, 300, torch.float32)
    cases = [quant_layer(7, 300, 4, 32, "group", "u8"), quant_layer(7, 300, 8, 48, "group", "sym"),
             quant_layer(7, 300, 2, 32, "group", "sym")]
    p, s, z, gs = quant_layer(7, 300, 4, 32)
    cases.append((p, s.float(), z, gs))
    for p, s, z, gs in cases:
        bits = 8 if p.shape[1] == 300 else 4 if p.shape[1] == 150 else 2
        ref = quant_linear_ref(x, p, s, z, bits, gs, 300)
        assert_close(ops.quant_linear(x, p, s, z, bits, gs, 300, 2, NEVER, I8), ref)
    p, s, z, gs = quant_layer(7, 300, 4, 32)
    ref = quant_linear_ref(x, p, s, z, 4, gs, 300)
    assert_close(ops.quant_linear(x, p, s, z, 4, gs, 300, 2, 1, I8), ref)    # GEMM path (batch >= 1)
    assert_close(ops.quant_linear(x, p, s, z, 4, gs, 300, 1, NEVER, I8), ref)  # AVX2
    assert_close(ops.quant_linear(x, p, s, z, 4, gs, 300, 2, NEVER), ref)     # default algo


def test_dispatch_passes_the_algo(ops, monkeypatch):
    """``ONEBIT_CPU_ALGO=i8`` reaches torch.ops.onebit.quant_linear (the LM head's op)."""
    if not vnni(ops):
        pytest.skip("needs AVX512-VNNI")
    p, s, z, gs = quant_layer(40, 512, 4, 32, seed=9)
    x = make_x(1, 512, torch.float32)
    exact = torch.ops.onebit.quant_linear(x, p, s, None, 4, gs, 512)
    monkeypatch.setenv("ONEBIT_CPU_ALGO", "i8")
    y = torch.ops.onebit.quant_linear(x, p, s, None, 4, gs, 512)
    assert not torch.equal(y, exact)
    assert rel_err(y, i8_reference(x, p, s, 4, 32, 512)) <= 1e-5
