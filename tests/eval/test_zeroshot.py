"""Scoring: a bigram toy computed by hand, acc_norm, batching/sharing equal one-by-one, truncation."""
import logging
import math

import pytest
import torch

from onebit.errors import OneBitError
from onebit.eval.tasks import Doc, load_task
from onebit.eval.zeroshot import encode_pairs, loglikelihoods, model_max_length, score_docs

P = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]])


class Bigram(torch.nn.Module):
    """p(next | prev) = P[prev]; speaks the HF interface the scorer uses (mask, cache, logits_to_keep)."""

    def __init__(self):
        super().__init__()
        self.logp = torch.nn.Parameter(P.log())
        self.config = type("C", (), {"max_position_embeddings": 6})()

    def forward(self, ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0,
                cache=None, **kw):
        logits = self.logp[ids]
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        out = type("O", (), {})()
        out.logits = logits
        out.cache = type("Cache", (), {"reorder_cache": lambda self, idx: None})()
        return out


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("bs", [1, 3])
def test_bigram_by_hand(share, bs):
    reqs = [([0], [1, 2]), ([2, 0], [0]), ([0], [0, 0]), ([1, 1], [1, 1, 2])]
    got = loglikelihoods(Bigram(), reqs, batch_size=bs, share=share)
    want = [(math.log(0.25) + math.log(0.3), False),  # p(1|0) p(2|1); argmax after 0 is 0
            (math.log(0.5), True),
            (math.log(0.5) + math.log(0.5), True),
            (math.log(0.6) + math.log(0.6) + math.log(0.3), False)]
    for (ll, g), (wl, wg) in zip(got, want):
        assert ll == pytest.approx(wl, abs=1e-6) and g == wg


def test_truncates_from_the_left_with_warning(caplog):
    m = Bigram()  # window of 6 tokens: 7 may be given (the last is only predicted)
    ctx, cont = [2, 2, 2, 2, 2, 1, 0], [1, 1]
    with caplog.at_level(logging.WARNING, logger="onebit"):
        (ll, _), = loglikelihoods(m, [(ctx, cont)], share=True)
    assert "truncated from the left" in caplog.text and "1 of 1" in caplog.text
    (ref, _), = loglikelihoods(m, [((ctx + cont)[-7:][:-2], cont)])
    assert ll == pytest.approx(ref) == pytest.approx(math.log(0.25) + math.log(0.6))
    with pytest.raises(OneBitError, match="does not fit the model's window"):
        loglikelihoods(m, [([0], [1] * 7)])


def test_acc_norm_divides_by_choice_length():
    docs = [Doc([("c", " a"), ("c", " bbbb")], gold=1, choices=["a", "bbbb"])]
    r = score_docs("arc_easy", docs, [(-2.0, False), (-4.0, False)])
    # acc: argmax(-2, -4) = 0 (wrong); acc_norm: argmax(-2/1, -4/4) = 1 (right)
    assert r.acc == 0.0 and r.acc_norm == 1.0 and r.preds == [0] and r.preds_norm == [1]
    assert score_docs("boolq", docs, [(-2.0, False), (-4.0, False)]).acc_norm is None


def test_lambada_metrics():
    docs = [Doc([("a", " b")], -1, ["b"]), Doc([("c", " d")], -1, ["d"])]
    r = score_docs("lambada", docs, [(-1.0, True), (-3.0, False)])
    assert r.acc == 0.5 and r.ppl == pytest.approx(math.exp(2.0))


def test_encode_pair_like_lm_eval(tok_260k):
    (c, k), = encode_pairs(tok_260k, [("Once upon a time ", "there")])
    assert c == tok_260k.encode("Once upon a time")  # trailing space moved to the continuation
    assert c + k == tok_260k.encode("Once upon a time there") and c[0] == tok_260k.bos_token_id


def test_batched_shared_equal_one_by_one(fp_260k, tok_260k, data_dir):
    docs = load_task("hellaswag", limit=4) + load_task("boolq", limit=2) + load_task("winogrande", limit=3)
    reqs = encode_pairs(tok_260k, [r for d in docs for r in d.requests])
    one = loglikelihoods(fp_260k, reqs, batch_size=1, share=False)
    for share in (True, False):
        many = loglikelihoods(fp_260k, reqs, batch_size=7, share=share)
        for (a, ga), (b, gb) in zip(one, many):
            assert a == pytest.approx(b, abs=2e-4) and ga == gb
    assert model_max_length(fp_260k) == 512
