"""q1_0: sign + one scale per block of a row (llama.cpp's Q1_0)."""
from __future__ import annotations

import copy

import pytest
import torch

from onebit.api import quantize
from onebit.errors import OneBitError
from onebit.methods.q1 import Q1Config
from onebit.nn.block_sign_linear import BlockSignLinearTrain, block_absmean


def test_block_absmean_handles_a_short_last_block():
    w = torch.tensor([[1., -3., 2., 2., -5.]])
    torch.testing.assert_close(block_absmean(w, 2), torch.tensor([[2., 2., 5.]]))


def test_train_and_packed_forms_agree_on_odd_shapes():
    lin = torch.nn.Linear(200, 7, bias=True)
    t = BlockSignLinearTrain.from_linear(lin, 128)
    assert t.scales.shape == (7, 2)
    p = t.to_packed(torch.float32)
    x = torch.randn(3, 200)
    torch.testing.assert_close(t(x), p(x))
    back = p.to_train()
    torch.testing.assert_close(back(x), p(x))


def test_gradients_reach_latents_and_scales():
    t = BlockSignLinearTrain.from_linear(torch.nn.Linear(256, 4), 128)
    t(torch.randn(2, 256)).sum().backward()
    assert t.weight.grad is not None and t.scales.grad is not None


def test_quantize_save_load_round_trip(tmp_path, fp_260k, stories260k):
    from onebit.formats.checkpoint import save_checkpoint
    from onebit.loading import load_checkpoint

    m = copy.deepcopy(fp_260k)
    quantize(m, Q1Config(), progress=False)
    ids = torch.randint(3, 500, (1, 12))
    with torch.no_grad():
        y = m(ids).logits
    ledger = save_checkpoint(m, tmp_path / "q1", source=stories260k)
    assert 1.0 < ledger.summary()["bits_per_linear_weight"] < 1.3
    m2 = load_checkpoint(tmp_path / "q1")
    with torch.no_grad():
        torch.testing.assert_close(m2(ids).logits, y)


def test_bad_group_size_is_refused():
    with pytest.raises(OneBitError, match="group-size"):
        Q1Config(group_size=12).validate()


def test_the_trainer_compiles_a_q1_0_student(fp_260k):
    from onebit.distill.student import student_from_teacher
    from onebit.distill.trainer import compile_safe
    from onebit.methods.onebit import OneBitConfig

    q1, _ = student_from_teacher(fp_260k, Q1Config())
    ob, _ = student_from_teacher(fp_260k, OneBitConfig())
    assert compile_safe(q1) and compile_safe(ob)        # q1_0 is compile-safe since scale_blocks


def test_torch_compile_trains_what_eager_trains(cols=192):
    """Rows of 192 (a short last block) once compiled to garbage scales, NaN within a few steps
    of distillation (an inductor miscompilation of repeat_interleave + slice; see
    onebit.nn.block_sign_linear.scale_blocks): compiled forward and gradients equal eager ones."""
    torch.manual_seed(0)
    m = BlockSignLinearTrain.from_linear(torch.nn.Linear(cols, 32, bias=True), 128)
    assert m.compile_safe
    x = torch.randn(2, 8, cols)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        torch._dynamo.reset()
        for f in (m, torch.compile(m)):
            m.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
                y = f(x)
            y.float().square().mean().backward()
            results.append((y.detach().float(), m.weight.grad.clone(), m.scales.grad.clone()))
        (ye, gwe, gse), (yc, gwc, gsc) = results[-2:]
        assert all(t.isfinite().all() for t in (yc, gwc, gsc))
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gwc, gwe, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gsc, gse, rtol=1e-4, atol=1e-6)
