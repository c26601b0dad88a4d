"""Rank-k scale layers: rank 1 is OneBit, packed == fake-quant, round trips, gradients."""
import pytest
import torch

from onebit.nn.onebit_linear import OneBitLinearTrain
from onebit.nn.rank_linear import RankScaleLinear, RankScaleLinearTrain


@pytest.fixture
def lin():
    torch.manual_seed(0)
    return torch.nn.Linear(172, 40, bias=True)        # in_features not a multiple of 8


def test_rank1_equals_onebit_train_and_packed(lin):
    x = torch.randn(2, 5, 172)
    r1, ob = RankScaleLinearTrain.from_linear(lin, 1), OneBitLinearTrain.from_linear(lin)
    assert torch.equal(r1.g, ob.g) and torch.equal(r1.h, ob.h)
    torch.testing.assert_close(r1(x), ob(x), rtol=1e-6, atol=1e-7)
    for dtype in (torch.float16, torch.float32):
        torch.testing.assert_close(r1.to_packed(dtype)(x), ob.to_packed(dtype)(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_packed_equals_fake_quant(lin, k, dtype):
    t = RankScaleLinearTrain.from_linear(lin, k)
    with torch.no_grad():                             # what the packed form stores
        t.g.copy_(t.g.to(dtype).float())
        t.h.copy_(t.h.to(dtype).float())
    p = t.to_packed(dtype)
    assert p.g.shape == (k, 172) and p.h.shape == (k, 40) and p.weight_packed.shape == (40, 22)
    x = torch.randn(3, 7, 172)
    torch.testing.assert_close(p(x), t(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x @ p.dense_weight().T + p.bias, p(x), rtol=1e-4, atol=1e-4)
    back = p.to_train()                               # latent = sign ⊙ |H Gᵀ|: same forward
    torch.testing.assert_close(back(x), p(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(back.to_packed(dtype).weight_packed, p.weight_packed)


def test_gradients_reach_latent_weight_g_h_and_bias(lin):
    t = RankScaleLinearTrain.from_linear(lin, 2)
    assert t.g.dim() == 1 and t.h.dim() == 1          # scale vectors for the trainers' param groups
    t(torch.randn(4, 172)).pow(2).sum().backward()
    for name, p in t.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert p.grad.isfinite().all(), name


def test_meta_skeleton_has_the_packed_shapes():
    m = RankScaleLinear(172, 40, 3, bias=False, device="meta")
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "weight_packed": (40, 22), "g": (3, 172), "h": (3, 40)}
