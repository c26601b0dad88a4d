"""LoRA adapters on packed layers: the hook adds x Aᵀ Bᵀ·α/r; gradients pass through packed layers;
merging into a float weight is exact and refused for a packed one; non-linear layers are refused."""
import copy

import pytest
import torch
from torch import nn

import onebit
from onebit.errors import OneBitError
from onebit.nn.lora import LoRA, add_lora, attach_adapters, check_linear, dense_weight, grad_path, merge_lora


def _packed(method_cfg, n_in=48, n_out=40):
    lin = nn.Linear(n_in, n_out, bias=True)
    model = nn.Sequential(lin)
    model.config = type("C", (), {})()
    onebit.quantize(model, method_cfg, progress=False)
    return model[0]


def _cfg(method, **kw):
    from onebit.registry import get_handler_cls

    return get_handler_cls(method).config_cls(**kw)


@pytest.mark.parametrize("method,kw", [("onebit", {}), ("rtn", {"bits": 4, "group_size": 16})])
def test_gradient_through_a_packed_layer_is_the_dense_layers(method, kw):
    mod = _packed(_cfg(method, **kw))
    w = dense_weight(mod, torch.float32, "cpu")
    x = torch.randn(3, 5, mod.in_features)
    with torch.no_grad():  # the dense equivalent reproduces the packed forward
        assert torch.allclose(x @ w.T + mod(torch.zeros(1, mod.in_features)), mod(x), atol=1e-4, rtol=1e-4)
    assert check_linear(mod) < 1e-3
    h = grad_path(mod)
    xg = x.clone().requires_grad_(True)
    gy = torch.randn(3, 5, mod.out_features)
    (mod(xg) * gy).sum().backward()
    assert torch.allclose(xg.grad, gy @ w, atol=1e-4, rtol=1e-4)
    h.remove()
    with pytest.raises(RuntimeError):  # without the hook the packed op has no autograd formula
        (mod(x.clone().requires_grad_(True)) * gy).sum().backward()


def test_adapter_starts_as_a_no_op_and_adds_its_update():
    mod = _packed(_cfg("onebit"))
    x = torch.randn(2, mod.in_features)
    with torch.no_grad():
        base = mod(x)
        lora = add_lora(mod, rank=4, alpha=8)
        assert torch.equal(mod(x), base)  # B = 0
        lora.B.normal_()
        assert torch.allclose(mod(x), base + (x @ lora.A.T @ lora.B.T) * 2.0, atol=1e-5)
    assert sorted(k for k in mod.state_dict() if k.startswith("lora.")) == ["lora.A", "lora.B"]
    with pytest.raises(OneBitError, match="already has"):
        add_lora(mod, 4, 8)
    copied = copy.deepcopy(mod)  # the hook travels with the module
    with torch.no_grad():
        assert torch.equal(copied(x), mod(x))


def test_merge_into_a_float_weight_is_exact_and_refused_for_packed():
    lin = nn.Linear(16, 12)
    lora = add_lora(lin, 2, 4)
    with torch.no_grad():
        lora.B.normal_()
        x = torch.randn(3, 16)
        want = lin(x)
        merge_lora(lin)
        assert not hasattr(lin, "lora") and not lin._forward_hooks
        assert torch.allclose(lin(x), want, atol=1e-5)
    mod = _packed(_cfg("onebit"))
    add_lora(mod, 2, 4)
    with pytest.raises(OneBitError, match="packed"):
        merge_lora(mod)


def test_layer_not_linear_in_its_input_is_refused():
    mod = _packed(_cfg("onebit", layernorm=True))
    with pytest.raises(OneBitError, match="not linear"):
        check_linear(mod)


def test_attach_adapters_checks_the_spec():
    model = nn.Sequential(nn.Linear(8, 6))
    spec = {"kind": "lora", "rank": 2, "alpha": 4.0, "modules": {"0": [6, 8]}}
    assert attach_adapters(model, spec) == ["0"] and isinstance(model[0].lora, LoRA)
    for bad, msg in [({**spec, "kind": "dora"}, "unknown adapter kind"), ({**spec, "rank": 0}, "rank"),
                     ({**spec, "modules": {"1": [6, 8]}}, "does not have"),
                     ({**spec, "modules": {"0": [8, 6]}}, "shape")]:
        with pytest.raises(OneBitError, match=msg):
            attach_adapters(nn.Sequential(nn.Linear(8, 6)), bad)
