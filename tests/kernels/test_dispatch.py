"""Backend selection: the fast CPU kernel is used when built; the reference when forced or when the
build fails; the ops give the same answer either way."""
from __future__ import annotations

import logging

import pytest
import torch

import onebit.kernels  # noqa: F401  (registers the backends)
from onebit.kernels import dispatch
from onebit.kernels.cpu import loader
from onebit.kernels.reference import binary_linear_ref, ternary_linear_ref
from onebit.nn.onebit_linear import OneBitLinearTrain

from ._cases import assert_close, binary_layer, make_x, ternary_layer


@pytest.fixture
def saved_loader_state():
    state = dict(loader._state)
    yield
    loader._state.update(state)


def _calls(monkeypatch, mod):
    """Count calls into the compiled module."""
    calls = []
    real = mod.binary_linear

    class Spy:
        def __getattr__(self, name):
            return getattr(mod, name)

        def binary_linear(self, *a):
            calls.append(a)
            return real(*a)

    monkeypatch.setitem(loader._state, "module", Spy())
    return calls


def test_cpu_picks_the_compiled_kernel(monkeypatch):
    mod = loader.load()
    assert mod is not None, loader.build_error()
    assert dispatch.backend("cpu").startswith("cpu-")
    assert dispatch.register_backends()["cpu"] == "cpu"
    calls = _calls(monkeypatch, mod)
    p, g, h = binary_layer(24, 40)
    x = make_x(2, 40, torch.float32)
    y = torch.ops.onebit.binary_linear(x, p, g, h, 40)
    assert len(calls) == 1
    assert_close(y, binary_linear_ref(x, p, g, h, 40))


def test_isa_env_caps_the_path(monkeypatch):
    monkeypatch.setenv("ONEBIT_CPU_ISA", "scalar")
    assert dispatch.backend("cpu") == "cpu-scalar"
    monkeypatch.setenv("ONEBIT_CPU_ALGO", "lut")
    assert dispatch.backend("cpu") == "cpu-scalar-lut"
    monkeypatch.setenv("ONEBIT_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="ONEBIT_CPU_ISA"):
        dispatch.cpu_params()


def test_env_forces_reference(monkeypatch):
    mod = loader.load()
    calls = _calls(monkeypatch, mod)
    monkeypatch.setenv("ONEBIT_KERNEL", "reference")
    assert dispatch.backend("cpu") == "reference"
    p, g, h = binary_layer(24, 40)
    x = make_x(3, 40, torch.bfloat16)
    assert torch.equal(torch.ops.onebit.binary_linear(x, p, g, h, 40), binary_linear_ref(x, p, g, h, 40))
    assert calls == []


def test_build_failure_falls_back_to_reference(monkeypatch, caplog, saved_loader_state):
    def no_compiler():
        raise RuntimeError("simulated: no C++ compiler (c++: command not found)")

    monkeypatch.setattr(loader, "_build", no_compiler)
    loader._state.update(module=None, error=None, tried=False)  # not built yet
    p, g, h = binary_layer(24, 172)
    tp, scale = ternary_layer(24, 172)
    x = make_x(3, 172, torch.float32)
    with caplog.at_level(logging.WARNING, logger="onebit.kernels"):
        y = torch.ops.onebit.binary_linear(x, p, g, h, 172)
        yt = torch.ops.onebit.ternary_linear(x, tp, scale, 172)
    assert torch.equal(y, binary_linear_ref(x, p, g, h, 172))
    assert torch.equal(yt, ternary_linear_ref(x, tp, scale, 172))
    assert "no C++ compiler" in loader.build_error()
    assert dispatch.backend("cpu") == "reference"
    warnings = [r for r in caplog.records if "could not build" in r.getMessage()]
    assert len(warnings) == 1 and "reference" in warnings[0].getMessage()
    torch.ops.onebit.binary_linear(x, p, g, h, 172)  # no second build attempt / warning
    assert len([r for r in caplog.records if "could not build" in r.getMessage()]) == 1


def test_unsupported_dtype_uses_reference():
    p, g, h = binary_layer(8, 16)
    x = torch.randn(2, 16, dtype=torch.float64)
    assert torch.equal(torch.ops.onebit.binary_linear(x, p, g, h, 16), binary_linear_ref(x, p, g, h, 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_packed_module_forward_same_on_both_backends(monkeypatch, dtype):
    torch.manual_seed(0)
    lin = torch.nn.Linear(100, 30, bias=True)
    packed = OneBitLinearTrain.from_linear(lin, layernorm=True).to_packed()
    x = torch.randn(2, 5, 100).to(dtype)
    fast = packed(x)
    monkeypatch.setenv("ONEBIT_KERNEL", "reference")
    ref = packed(x)
    assert_close(fast, ref)
