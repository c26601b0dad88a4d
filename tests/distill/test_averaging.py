"""Weight averaging over the end of a stage (``TrainConfig.average_last``): the exact mean of the
window's parameters, the last step's parameters recoverable, exact resume, bad values refused."""
import pytest
import torch

from onebit.distill.averaging import ParamAverage, start_step
from onebit.distill.student import freeze, student_from_teacher
from onebit.distill.trainer import TrainConfig, Trainer
from onebit.errors import OneBitError
from onebit.methods.onebit import OneBitConfig


@pytest.fixture(scope="module")
def data(fp_260k, tmp_path_factory):
    from onebit.distill.data import teacher_data

    return teacher_data(fp_260k, 16, 64, seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def _trainer(teacher, data, state_dir=None, **kw):
    student, qc = student_from_teacher(teacher, OneBitConfig())
    names = freeze(student, qc["modules"])
    cfg = TrainConfig(**{**dict(steps=6, batch_size=4, lr=3e-3, warmup=2), **kw})
    return Trainer(teacher, student, data, cfg, names, state_dir)


def _params(tr):
    own = dict(tr.student.named_parameters())
    return {n: own[n].detach().clone() for n in tr.trainable}


def test_running_mean_and_swap():
    p = {"a": torch.nn.Parameter(torch.zeros(3)), "b": torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.bfloat16))}
    avg = ParamAverage(p)
    for v in (1.0, 2.0, 6.0):
        with torch.no_grad():
            for t in p.values():
                t.fill_(v)
        avg.update()
    assert avg.count == 3 and torch.equal(avg.mean["a"], torch.full((3,), 3.0))
    avg.swap()
    assert torch.equal(p["a"].detach(), torch.full((3,), 3.0)) and p["b"].dtype == torch.bfloat16
    assert float(p["b"].detach()[0, 0]) == 3.0
    avg.swap()  # twice: both back
    assert torch.equal(p["a"].detach(), torch.full((3,), 6.0)) and torch.equal(avg.mean["a"], torch.full((3,), 3.0))


def test_start_step():
    assert start_step(10, 0.0) == 10 and start_step(10, 0.3) == 7 and start_step(10, 1.0) == 0
    assert start_step(10, 0.01) == 9  # at least the last step


def test_the_average_is_the_mean_of_the_window(fp_260k, data):
    """average_last 0.5 of 6 steps: the saved student is the mean of the parameters after steps 4, 5, 6
    of the same run without averaging; ``replaced.swap()`` gives the last step's parameters back."""
    plain = _trainer(fp_260k, data)
    seen = []
    for k in range(1, 7):
        plain.train(stop_at=k)
        seen.append(_params(plain))
    avg = _trainer(fp_260k, data, average_last=0.5)
    avg.train()
    assert avg.replaced is not None and avg.replaced.count == 3
    got = _params(avg)
    for n in got:
        want = torch.stack([s[n] for s in seen[3:]]).mean(0)
        assert torch.allclose(got[n], want, rtol=0, atol=1e-6), n
        assert not torch.allclose(got[n], seen[-1][n]) or n.endswith("bias"), n  # it did change something
    avg.replaced.swap()
    for n, t in _params(avg).items():
        assert torch.allclose(t, seen[-1][n], rtol=0, atol=1e-6), n


def test_both_evaluations_recorded(fp_260k, data, tok_260k):
    from onebit.eval.data import load_text
    from onebit.eval.perplexity import tokenize_text

    tr = _trainer(fp_260k, data, average_last=0.5, eval_windows=1)
    tr.eval_ids, tr.eval_seqlen = tokenize_text(tok_260k, load_text("tinystories"))[:200], 64
    tr.train()
    last = [h for h in tr.history if "ppl" in h][-2:]
    assert [h.get("averaged") for h in last] == [False, True] and last[0]["step"] == last[1]["step"] == 6


def test_resume_inside_the_window_equals_uninterrupted(fp_260k, data, tmp_path):
    full = _trainer(fp_260k, data, tmp_path / "a", average_last=0.5)
    full.train()
    part = _trainer(fp_260k, data, tmp_path / "b", average_last=0.5, save_every=5)
    part.train(stop_at=5)  # 2 of the 3 averaged steps done, the mean in the checkpoint
    resumed = _trainer(fp_260k, data, tmp_path / "b", average_last=0.5, save_every=5)
    resumed.load_state()
    assert resumed.average.count == 2
    resumed.train()
    a = _params(full)
    for n, t in _params(resumed).items():
        assert torch.allclose(t, a[n], rtol=0, atol=1e-6), n
    # a finished state holds the averaged student and no mean: resuming it changes nothing
    again = _trainer(fp_260k, data, tmp_path / "b", average_last=0.5, save_every=5)
    again.load_state()
    again.train()
    for n, t in _params(again).items():
        assert torch.allclose(t, a[n], rtol=0, atol=1e-6), n


def test_bad_fraction_refused(fp_260k, data):
    with pytest.raises(OneBitError, match="--average-last"):
        _trainer(fp_260k, data, average_last=1.5)
