"""Mixture-of-scales layers: one expert is OneBit, packed == fake-quant, round trips, gradients."""
import pytest
import torch

from onebit.nn.mos_linear import MoSLinear, MoSLinearTrain
from onebit.nn.onebit_linear import OneBitLinearTrain


@pytest.fixture
def lin():
    torch.manual_seed(0)
    return torch.nn.Linear(172, 40, bias=True)


def test_one_expert_equals_onebit_train_and_packed(lin):
    x = torch.randn(2, 5, 172)
    m1, ob = MoSLinearTrain.from_linear(lin, 1, noise=0.1), OneBitLinearTrain.from_linear(lin)
    torch.testing.assert_close(m1(x), ob(x), rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        m1.router.normal_()                           # one expert: any router mixes weight 1
    torch.testing.assert_close(m1(x), ob(x), rtol=1e-6, atol=1e-7)
    for dtype in (torch.float16, torch.float32):
        torch.testing.assert_close(m1.to_packed(dtype)(x), ob.to_packed(dtype)(x), rtol=1e-6, atol=1e-6)


def test_zero_router_start_is_onebit_svid(lin):
    """Every expert = SVID (+ zero-mean noise), router zero: the start is OneBit-SVID's forward."""
    x = torch.randn(2, 5, 172)
    m, ob = MoSLinearTrain.from_linear(lin, 4, noise=0.05), OneBitLinearTrain.from_linear(lin)
    assert not torch.allclose(m.g_experts[0], m.g_experts[1])
    torch.testing.assert_close(m(x), ob(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_equals_fake_quant(lin, dtype):
    t = MoSLinearTrain.from_linear(lin, 4, noise=0.05)
    with torch.no_grad():
        t.router.copy_(torch.randn_like(t.router).mul(0.2).to(dtype).float())   # a trained-looking router
        t.g.copy_(t.g.to(dtype).float())
        t.h.copy_(t.h.to(dtype).float())
    p = t.to_packed(dtype)
    assert p.g.shape == (4, 172) and p.h.shape == (4, 40) and p.router.shape == (172, 4)
    x = torch.randn(3, 7, 172)
    torch.testing.assert_close(p(x), t(x), rtol=1e-5, atol=1e-5)
    back = p.to_train()
    torch.testing.assert_close(back(x), p(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(back.to_packed(dtype).weight_packed, p.weight_packed)


def test_gradients_reach_latent_weight_experts_router_and_bias(lin):
    t = MoSLinearTrain.from_linear(lin, 4, noise=0.05)
    assert all(p.dim() == 1 for n, p in t.named_parameters() if n != "weight")
    t(torch.randn(4, 172)).pow(2).sum().backward()
    for name, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert p.grad.isfinite().all(), name
    # every expert moves
    assert (t.g.grad.view(4, 172).abs().sum(1) > 0).all() and (t.h.grad.view(4, 40).abs().sum(1) > 0).all()


def test_meta_skeleton_has_the_packed_shapes():
    m = MoSLinear(172, 40, 3, bias=True, device="meta")
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "weight_packed": (40, 22), "g": (3, 172), "h": (3, 40), "router": (172, 3), "bias": (40,)}
