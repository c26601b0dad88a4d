"""quant_linear / block_sign_linear dispatch: the C++ kernels serve the ops on CPU (every ISA via
ONEBIT_CPU_ISA, the GEMM path via ONEBIT_CPU_QMM_THRESHOLD); the reference when forced, when the
build failed, for bits the kernels lack or a dtype they do not take; the modules that use the ops
(BlockSignLinear, QuantLinear, QuantLMHead int8/int4/int2/q1) give the same output either way."""
from __future__ import annotations

import pytest
import torch

import onebit.kernels  # noqa: F401  (registers the backends)
from onebit.kernels import dispatch
from onebit.kernels.cpu import loader
from onebit.kernels.reference import block_sign_linear_ref, quant_linear_ref
from onebit.nn.block_sign_linear import BlockSignLinearTrain
from onebit.nn.quant_embedding import QuantEmbedding, QuantLMHead
from onebit.nn.quant_linear import QuantLinearTrain

from ._cases import assert_close, make_x
from .test_quant_cpu import quant_layer, sign_layer


@pytest.fixture
def spy(monkeypatch):
    """Record the calls into the compiled quant ops."""
    real = loader.quant_ops()
    assert real is not None, loader.build_error()
    calls = []

    class Spy:
        def __getattr__(self, name):
            f = getattr(real, name)

            def wrapped(*a):
                calls.append((name, a))
                return f(*a)
            return wrapped

    monkeypatch.setattr(loader, "quant_ops", lambda: Spy() if loader.load() is not None else None)
    return calls


def test_registered_for_every_op():
    assert dispatch.registered_kernels("cpu") == {op: "cpu" for op in dispatch.OPS}


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_ops_use_the_kernel_on_every_isa(monkeypatch, spy, isa):
    monkeypatch.setenv("ONEBIT_CPU_ISA", isa)
    p, s, z, gs = quant_layer(37, 172, 4, 32, "group", "u8")
    sp, ss = sign_layer(37, 172, 32)
    for batch in (1, 3, 70):  # 70: the GEMM path (default threshold)
        x = make_x(batch, 172, torch.bfloat16)
        assert_close(torch.ops.onebit.quant_linear(x, p, s, z, 4, gs, 172), quant_linear_ref(x, p, s, z, 4, gs, 172))
        assert_close(torch.ops.onebit.block_sign_linear(x, sp, ss, 32, 172),
                     block_sign_linear_ref(x, sp, ss, 32, 172))
    assert len(spy) == 6
    # the ISA the kernels are asked for: (.., in_features, isa, mm_threshold[, algo])
    assert all(a[7 if name == "quant_linear" else 5] == dispatch._ISA[isa] for name, a in spy)


def test_gemm_threshold_env(monkeypatch, spy):
    monkeypatch.setenv("ONEBIT_CPU_QMM_THRESHOLD", "2")
    p, s, z, gs = quant_layer(9, 64, 8, 32, "channel", "sym")
    x = make_x(3, 64, torch.float32)
    assert_close(torch.ops.onebit.quant_linear(x, p, s, z, 8, gs, 64), quant_linear_ref(x, p, s, z, 8, gs, 64))
    assert spy[-1][1][8] == 2  # (.., isa, mm_threshold, algo)


def test_fallbacks_to_reference(monkeypatch, spy):
    x = make_x(2, 64, torch.float64)  # a dtype the kernels do not take
    p, s, z, gs = quant_layer(9, 64, 4, 32)
    assert torch.equal(torch.ops.onebit.quant_linear(x, p, s, z, 4, gs, 64), quant_linear_ref(x, p, s, z, 4, gs, 64))
    gen = torch.Generator().manual_seed(0)  # 3-bit codes: no C++ kernel
    p3 = onebit.formats.packing.pack(torch.randint(0, 8, (9, 64), generator=gen, dtype=torch.uint8), 3)
    x32 = make_x(2, 64, torch.float32)
    assert torch.equal(torch.ops.onebit.quant_linear(x32, p3, s, None, 3, gs, 64),
                       quant_linear_ref(x32, p3, s, None, 3, gs, 64))
    monkeypatch.setenv("ONEBIT_KERNEL", "reference")
    sp, ss = sign_layer(9, 64, 32)
    assert torch.equal(torch.ops.onebit.block_sign_linear(x32, sp, ss, 32, 64), block_sign_linear_ref(x32, sp, ss, 32, 64))
    assert spy == []


def test_build_failure_falls_back(monkeypatch):
    monkeypatch.setitem(loader._state, "module", None)  # as after a failed build
    monkeypatch.setitem(loader._state, "tried", True)
    assert loader.quant_ops() is None
    sp, ss = sign_layer(9, 64, 32)
    x = make_x(2, 64, torch.float32)
    assert torch.equal(torch.ops.onebit.block_sign_linear(x, sp, ss, 32, 64), block_sign_linear_ref(x, sp, ss, 32, 64))


def test_register_backend_subset(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.library, "register_kernel", lambda op, dev, fn: calls.append((op, dev)))
    monkeypatch.setattr(dispatch, "_kernels", {})
    monkeypatch.setattr(dispatch, "_registered", {})
    dispatch.register_backend("meta", "m", block_sign_linear=lambda *a: None)
    dispatch.register_backend("meta", "m2", lambda *a: None, lambda *a: None)  # positional, as before
    dispatch.register_backend("meta", "m3", lambda *a: None)  # already has binary_linear: kept
    assert calls == [("onebit::block_sign_linear", "meta"), ("onebit::binary_linear", "meta"),
                     ("onebit::ternary_linear", "meta")]
    assert dispatch.registered_kernels("meta") == {"block_sign_linear": "m", "binary_linear": "m2",
                                                   "ternary_linear": "m2"}
    with pytest.raises(ValueError, match="unknown packed ops"):
        dispatch.register_backend("meta", "m", matmul=lambda *a: None)


def _same_on_both_backends(monkeypatch, module, x, dense=None):
    fast = module(x)
    monkeypatch.setenv("ONEBIT_KERNEL", "reference")
    ref = module(x)
    monkeypatch.delenv("ONEBIT_KERNEL")
    assert_close(fast, ref)
    if dense is not None:  # the forward before the op: a dense matmul with the dequantized weight
        assert_close(fast, dense)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 70])
def test_block_sign_linear_module(monkeypatch, spy, dtype, batch):
    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 37, bias=True)
    m = BlockSignLinearTrain.from_linear(lin, group_size=64).to_packed()
    x = torch.randn(batch, 200).to(dtype)
    dense = torch.nn.functional.linear(x, m.dense_weight(dtype)) + m.bias.to(dtype)
    _same_on_both_backends(monkeypatch, m, x, dense)
    assert spy and spy[0][0] == "block_sign_linear"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["int8", "int4", "int2", "q1"])
def test_quant_lm_head(monkeypatch, spy, dtype, kind):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(300, 160)
    for head in (QuantLMHead.tied_to(QuantEmbedding.from_embedding(emb, kind)),
                 QuantLMHead.from_linear(torch.nn.Linear(160, 300, bias=True), kind)):
        x = torch.randn(2, 3, 160).to(dtype)
        dense = torch.nn.functional.linear(x, head.dense_weight(dtype))
        dense = dense + head.bias.to(dtype) if head.bias is not None else dense
        _same_on_both_backends(monkeypatch, head, x, dense)
    assert {n for n, _ in spy} == {"block_sign_linear" if kind == "q1" else "quant_linear"}


@pytest.mark.parametrize("sym", [True, False])
def test_quant_linear_module(monkeypatch, spy, sym):
    torch.manual_seed(0)
    m = QuantLinearTrain.from_linear(torch.nn.Linear(160, 33, bias=False), bits=4, group_size=32, sym=sym).to_packed()
    x = torch.randn(1, 160)
    _same_on_both_backends(monkeypatch, m, x, torch.nn.functional.linear(x, m.dense_weight()))
    assert spy
