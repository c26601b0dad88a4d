"""KLD: a model against itself is 0 with 100% agreement; a uniform teacher by hand; real windows."""
import math

import pytest
import torch

from onebit.eval.kld import kl_divergence
from onebit.eval.perplexity import perplexity, tokenize_text


class Fixed(torch.nn.Module):
    """The same next-token distribution everywhere."""

    def __init__(self, probs):
        super().__init__()
        self.lp = torch.nn.Parameter(torch.tensor(probs).log())

    def forward(self, ids):
        o = type("O", (), {})()
        o.logits = self.lp.expand(*ids.shape, -1)
        return o


def test_uniform_teacher_by_hand():
    q = [0.7, 0.2, 0.1]
    ids = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 1])
    r = kl_divergence(Fixed([1 / 3] * 3), Fixed(q), ids, seqlen=3)
    want = sum(1 / 3 * (math.log(1 / 3) - math.log(x)) for x in q)
    assert r.tokens == 6 and r.windows == 3
    assert r.mean_kld == pytest.approx(want, rel=1e-5) and r.kld_percentiles["99.0"] == pytest.approx(want, rel=1e-5)
    assert r.ppl_teacher == pytest.approx(3.0, rel=1e-5)
    # targets 1,2 | 0,1 | 2,1 -> student nll = -(2 log .2 + 2 log .1 + log .7 + log .2)/6 ... per token mean
    tg = [1, 2, 0, 1, 2, 1]
    assert r.ppl_student == pytest.approx(math.exp(-sum(math.log(q[t]) for t in tg) / 6), rel=1e-5)
    assert r.top1_agreement == 1.0  # uniform argmax is token 0, as the student's
    r2 = kl_divergence(Fixed([0.1, 0.2, 0.7]), Fixed(q), ids, seqlen=3)
    assert r2.top1_agreement == 0.0 and r2.mean_kld > 0
    half = kl_divergence(Fixed([1 / 3] * 3), Fixed(q), torch.arange(8) % 3, seqlen=4, second_half=True)
    assert half.tokens == 2 * 1  # positions 2 -> 3 only, per window of 4


def test_model_against_itself(fp_260k, tok_260k, data_dir):
    from onebit.eval.data import load_text

    ids = tokenize_text(tok_260k, load_text("tinystories"))
    r = kl_divergence(fp_260k, fp_260k, ids, 128, max_windows=3, batch_size=2)
    assert r.mean_kld == pytest.approx(0.0, abs=1e-6) and r.kld_percentiles["max"] < 1e-5
    assert r.top1_agreement == 1.0 and r.ppl_ratio == pytest.approx(1.0) and r.rms_delta_p < 1e-6
    assert r.ppl_teacher == pytest.approx(perplexity(fp_260k, ids, 128, 3, progress=False).ppl, rel=1e-5)
    assert r.tokens == 3 * 127


def test_perturbed_student_disagrees(fp_260k, tok_260k, data_dir):
    import copy

    from onebit.eval.data import load_text

    student = copy.deepcopy(fp_260k)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = tokenize_text(tok_260k, load_text("tinystories"))
    r = kl_divergence(fp_260k, student, ids, 128, max_windows=2)
    p = r.kld_percentiles
    assert r.mean_kld > 0.001 and p["min"] <= p["50.0"] <= p["99.0"] <= p["max"]
    assert r.top1_agreement < 1.0 and r.ppl_student > r.ppl_teacher


def test_teacher_cache_runs_the_teacher_once_and_changes_nothing():
    """``teacher_cache`` (``onebit compare``: one KL call per method) gives the uncached numbers and
    runs the teacher on no window the second time."""
    calls = []

    class Counting(Fixed):
        def forward(self, ids):
            calls.append(ids.shape[0])
            return super().forward(ids)

    teacher, student = Counting([0.5, 0.3, 0.2]), Fixed([0.2, 0.3, 0.5])
    ids = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 1, 0, 2, 1])
    plain = kl_divergence(teacher, student, ids, seqlen=3, batch_size=2)
    assert len(calls) == 2
    cache: dict = {}
    first = kl_divergence(teacher, student, ids, seqlen=3, batch_size=2, teacher_cache=cache)
    assert len(calls) == 4 and sorted(cache) == [0, 2]
    again = kl_divergence(teacher, Fixed([0.1, 0.1, 0.8]), ids, seqlen=3, batch_size=2, teacher_cache=cache)
    assert len(calls) == 4                                   # the teacher did not run again
    assert first.mean_kld == plain.mean_kld and first.top1_agreement == plain.top1_agreement
    want = kl_divergence(teacher, Fixed([0.1, 0.1, 0.8]), ids, seqlen=3, batch_size=2)
    assert again.mean_kld == pytest.approx(want.mean_kld, rel=1e-12) and again.mean_kld != first.mean_kld
