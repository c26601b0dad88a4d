"""Our zero-shot scoring equals lm-evaluation-harness's, item by item, on stories3M (PIQA, ARC-Easy).

lm-eval runs its **own** task configs (prompts, tokenization, scoring) on the local files, converted
back to the HF datasets' rows; only the per-item argmaxes and log-likelihoods are compared here.
"""
import os

import pytest

if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):  # CI installs the lmeval extra
    pytest.importorskip("lm_eval")

from onebit.eval.harness import hf_rows, run_harness  # noqa: E402
from onebit.eval.zeroshot import evaluate  # noqa: E402

LIMIT = 40


def sample_predictions(samples: list[dict]) -> tuple[list[int], list[list[float]]]:
    """(argmax prediction, log-likelihoods) per lm-eval sample of a multiple-choice task."""
    preds, lls = [], []
    for s in samples:
        ll = [float(r[0]) for r in s["filtered_resps"]]
        preds.append(max(range(len(ll)), key=lambda i: (ll[i], -i)))
        lls.append(ll)
    return preds, lls


@pytest.fixture(scope="module")
def both(stories3m, data_dir):
    from onebit.models import load_model, load_tokenizer

    m, tok = load_model(stories3m), load_tokenizer(stories3m)
    tasks = ["piqa", "arc_easy"]
    return run_harness(m, tok, tasks, limit=LIMIT, batch_size=16), evaluate(m, tok, tasks, limit=LIMIT)


@pytest.mark.parametrize("task", ["piqa", "arc_easy"])
def test_per_item_predictions_equal_lm_eval(both, task):
    theirs, ours = both
    samples = theirs["samples"][task]
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    preds, lls = sample_predictions(samples)
    assert preds == ours[task].preds
    assert [s["acc_norm"] for s in samples] == [float(p == g) for p, g in
                                               zip(ours[task].preds_norm, [s["target"] for s in samples])]
    assert [s["acc"] for s in samples] == [float(p == s["target"]) for p, s in zip(preds, samples)]
    for a, b in zip(lls, ours[task].lls):
        assert a == pytest.approx(b, abs=5e-4)
    r = theirs["results"][task]
    assert r["acc,none"] == pytest.approx(ours[task].acc) and r["acc_norm,none"] == pytest.approx(ours[task].acc_norm)


def test_hf_rows_round_trip(data_dir):
    from onebit.eval.tasks import load_task, task_path

    w = hf_rows("winogrande", task_path("winogrande"))[0]
    assert w["sentence"].startswith("Sarah was a much better surgeon than Maria so _ always")
    b = hf_rows("boolq", task_path("boolq"))[0]
    assert b["question"] == "does ethanol take more energy make that produces" and b["label"] == 0
    assert len(hf_rows("piqa", task_path("piqa"))) == len(load_task("piqa"))
