"""Does a student still copy repeated text as its teacher does?

    python bench/copy_nll.py TEACHER STUDENT... [--samples 8] [--seqlen 256] [--seed 4242]

The teacher generates ``--samples`` fresh sequences of ``--seqlen`` tokens (``--seed``; not any
training cache's seed, so no model saw them), and every model scores two kinds of rows: each
sequence followed by itself again (``A A``) and by another sequence (``A B``).  It prints the
perplexity of the first half and of the second half of each kind.  A model that copies predicts
the second ``A`` almost exactly (SmolLM2-135M: 1.31, against 31.7 on ``B``;
bench/results/blockwise_smollm2/copy_nll_run20.log); one that does not scores it about as it scores
a fresh ``B``.  Real text repeats names and phrases, so a student that lost
copying loses most where the teacher gains from its context (long perplexity windows).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


@torch.inference_mode()
def half_ppl(model, rows: torch.Tensor) -> tuple[float, float]:
    """Perplexity of the predicted tokens in the first and second half of ``rows`` ``[n, 2L − 1]``."""
    logits = model(rows).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="none")
    nll = nll.view(rows.shape[0], -1)
    half = (rows.shape[1] + 1) // 2 - 1  # predictions of the first sequence's tokens 1..L-1
    return float(nll[:, :half].mean().exp()), float(nll[:, half:].mean().exp())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="the teacher first (it generates the text), then students")
    p.add_argument("--samples", type=int, default=8, help="sequences A (and as many B; default %(default)s)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per sequence (default %(default)s)")
    p.add_argument("--seed", type=int, default=4242, help="generation seed (default %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.samples < 1 or a.seqlen < 8:
        p.error("need --samples >= 1 and --seqlen >= 8")
    torch.set_num_threads(a.threads)
    from onebit.calibration import teacher_samples
    from onebit.models import load_model

    teacher = load_model(a.models[0]).eval()
    ids = teacher_samples(teacher, 2 * a.samples, a.seqlen, seed=a.seed)
    first, other = ids[:a.samples], ids[a.samples:]
    rows = {"A A": torch.cat([first, first[:, 1:]], 1), "A B": torch.cat([first, other[:, 1:]], 1)}
    print(f"{a.samples} fresh teacher sequences of {a.seqlen} tokens (seed {a.seed}); perplexity of the first "
          f"and the second half of each row")
    base = None
    for name in a.models:
        model = teacher if name == a.models[0] else load_model(name).eval()
        res = {k: half_ppl(model, r) for k, r in rows.items()}
        base = base or res
        print(name)
        for k, (h1, h2) in res.items():
            print(f"  {k}: first half {h1:9.2f} ({h1 / base[k][0]:5.2f}x)   second half {h2:9.3f} "
                  f"({h2 / base[k][1]:6.2f}x)", flush=True)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
