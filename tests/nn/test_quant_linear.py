"""The n-bit op and modules: op == dense math, opcheck, 3-bit and odd shapes, to_train round trip."""
import pytest
import torch

import onebit.kernels  # noqa: F401
from onebit.formats.packing import pack
from onebit.kernels import reference
from onebit.methods.quant import dequantize_codes, rtn_quantize
from onebit.nn.bitnet_linear import BitNetLinearTrain
from onebit.nn.quant_linear import QuantLinearTrain


@pytest.mark.parametrize("bits,gs,sym", [(2, 0, True), (3, 16, False), (4, -1, True), (8, 7, False),
                                         (5, 32, True)])
def test_quant_linear_op_equals_dense(bits, gs, sym):
    w, x = torch.randn(21, 45), torch.randn(2, 3, 45)
    codes, scale, zero = rtn_quantize(w, bits, sym, gs)
    y = torch.ops.onebit.quant_linear(x, pack(codes, bits), scale.half(),
                                      None if sym else zero.to(torch.uint8), bits, gs, 45)
    assert torch.allclose(y, x @ dequantize_codes(codes, scale, zero, gs).T, rtol=1e-5, atol=1e-5)


def test_row_blocking(monkeypatch):
    w, x = torch.randn(30, 16), torch.randn(4, 16)
    codes, scale, zero = rtn_quantize(w, 4, False, 8)
    args = (x, pack(codes, 4), scale.half(), zero.to(torch.uint8), 4, 8, 16)
    full = torch.ops.onebit.quant_linear(*args)
    monkeypatch.setattr(reference, "ROW_BLOCK", 7)
    assert torch.allclose(reference.quant_linear_ref(*args), full, rtol=1e-5, atol=1e-6)


def test_opcheck_and_compile():
    w, x = torch.randn(8, 24), torch.randn(3, 24)
    codes, scale, zero = rtn_quantize(w, 3, False, 8)
    args = (x, pack(codes, 3), scale.half(), zero.to(torch.uint8), 3, 8, 24)
    torch.library.opcheck(torch.ops.onebit.quant_linear.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    f = torch.compile(lambda x: torch.ops.onebit.quant_linear(x, *args[1:]), backend="eager", fullgraph=True)
    assert torch.allclose(f(x), torch.ops.onebit.quant_linear(*args))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_every_bit_width_packs_and_round_trips(bits):
    lin = torch.nn.Linear(37, 11)
    t = QuantLinearTrain.from_linear(lin, bits, group_size=16, sym=False)
    p = t.to_packed()
    x = torch.randn(5, 37)
    assert torch.allclose(p(x), t(x), rtol=1e-5, atol=1e-6)
    back = p.to_train()
    assert torch.allclose(back(x), p(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(back.to_packed().weight_packed, p.weight_packed)


def test_bitnet_train_module_is_trained_through_ste():
    lin = torch.nn.Linear(16, 4, bias=False)
    t = BitNetLinearTrain.from_linear(lin, ternary=True)
    opt = torch.optim.SGD(t.parameters(), lr=0.1)
    before = t.to_packed().weight_packed.clone()
    for _ in range(20):
        opt.zero_grad()
        (t(torch.randn(8, 16)) - 3).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, t.to_packed().weight_packed)
