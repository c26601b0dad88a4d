"""Distillation losses against values computed by hand; the schedule; the sign STE."""
import math

import pytest
import torch
import torch.nn.functional as F

from onebit.distill.losses import distill_loss, hidden_mse, kd_loss, lm_loss
from onebit.distill.trainer import lr_factor
from onebit.nn.ste import sign_ste


def _logits(*rows):
    return torch.tensor([rows], dtype=torch.float32)  # [1, seq, vocab]


def test_kl_hand_computed():
    # teacher p = [3/4, 1/4] (logits ln3, 0), student uniform
    t, s = _logits([math.log(3), 0.0]), _logits([0.0, 0.0])
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert kd_loss(s, t, 1.0, "kl").item() == pytest.approx(want, rel=1e-6)
    assert kd_loss(s, t, 1.0, "kl").item() == pytest.approx(0.130812, abs=1e-6)
    # temperature 2: p_t = [√3, 1] / (√3 + 1), times T² = 4
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    want_t2 = 4 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    assert kd_loss(s, t, 2.0, "kl").item() == pytest.approx(want_t2, rel=1e-6)
    # equal distributions: zero
    assert kd_loss(t, t, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_ce_hand_computed_and_mean_over_tokens():
    t = _logits([math.log(3), 0.0], [0.0, 0.0])
    s = _logits([0.0, 0.0], [math.log(3), 0.0])
    # token 1: -(3/4 ln 1/2 + 1/4 ln 1/2) = ln 2; token 2: -(1/2 ln 3/4 + 1/2 ln 1/4)
    tok2 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert kd_loss(s, t, 1.0, "ce").item() == pytest.approx((math.log(2) + tok2) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        kd_loss(s, t, 1.0, "mse")


def test_hidden_mse_hand_computed():
    s = [torch.tensor([[[3.0, 4.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])]
    t = [torch.tensor([[[4.0, 3.0]]]), torch.tensor([[[5.0, 0.0], [0.0, -1.0]]])]
    # layer 1: (.6-.8)² + (.8-.6)² = .08 ; layer 2: tokens 0 and (0² + 2²) = 4 -> mean 2
    assert hidden_mse(s, t).item() == pytest.approx(0.08 + 2.0, rel=1e-6)
    # scale-invariant per token
    assert hidden_mse([x * 7 for x in s], t).item() == pytest.approx(2.08, rel=1e-6)
    with pytest.raises(ValueError):
        hidden_mse(s, t[:1])


def test_lm_loss_and_total():
    v = 8
    logits = torch.zeros(2, 5, v)
    ids = torch.randint(0, v, (2, 5))
    assert lm_loss(logits, ids).item() == pytest.approx(math.log(v), rel=1e-6)
    t = torch.randn(2, 5, v)
    hs = [torch.randn(2, 5, 3)]
    ht = [torch.randn(2, 5, 3)]
    out = distill_loss(logits, t, ids, hs, ht, temperature=1.0, alpha=0.5, lm_weight=2.0)
    want = kd_loss(logits, t) + 0.5 * hidden_mse(hs, ht) + 2.0 * math.log(v)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    off = distill_loss(logits, t, ids, hs, ht, alpha=0.0, lm_weight=0.0)
    assert off["hidden"].item() == 0 and off["lm"].item() == 0
    assert off["loss"].item() == pytest.approx(kd_loss(logits, t).item())


def test_kd_gradient_matches_closed_form():
    # d KL(p_t || softmax(z)) / dz = (softmax(z) - p_t) / n_tokens at T = 1
    z = torch.randn(1, 3, 5, requires_grad=True)
    t = torch.randn(1, 3, 5)
    kd_loss(z, t).backward()
    want = (F.softmax(z.detach(), -1) - F.softmax(t, -1)) / 3
    assert torch.allclose(z.grad, want, atol=1e-6)


def test_lr_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_sign_ste_gradient():
    w = torch.tensor([-2.0, -0.3, 0.0, 0.4, 1.5], requires_grad=True)
    y = sign_ste(w)
    assert y.tolist() == [-1, -1, 1, 1, 1]
    (y * torch.arange(1.0, 6.0)).sum().backward()
    assert w.grad.tolist() == [1, 2, 3, 4, 5]  # identity surrogate
    w.grad = None
    (sign_ste(w, clip=1.0) * torch.arange(1.0, 6.0)).sum().backward()
    assert w.grad.tolist() == [0, 2, 3, 4, 0]  # clipped surrogate: zero where |w| > 1


def test_onebit_train_gradient_is_ste():
    from onebit.nn.onebit_linear import OneBitLinearTrain

    lin = torch.nn.Linear(6, 4, bias=False)
    m = OneBitLinearTrain.from_linear(lin)
    x = torch.randn(3, 6)
    m(x).pow(2).sum().backward()
    # reference: the same layer with S = sign(W) as a leaf; STE says dL/dW = dL/dS
    s = torch.where(m.weight.detach() >= 0, 1.0, -1.0).requires_grad_(True)
    (F.linear(x * m.g.detach(), s) * m.h.detach()).pow(2).sum().backward()
    assert torch.allclose(m.weight.grad, s.grad, atol=1e-6)
    assert m.g.grad is not None and m.h.grad is not None
