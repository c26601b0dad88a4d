"""Where in a long window a student loses to its teacher: perplexity by token position.

    python bench/position_nll.py TEACHER STUDENT... [--data wikitext2] [--seqlen 2048] [--windows 8]

Scores the same ``--windows`` windows of ``--seqlen`` tokens (the project's perplexity windows:
no start token, every position predicted) with each model and prints the perplexity of the tokens
whose position falls in each bucket (0–63, 64–255, 256–511, …), and each student's ratio to the
first model per bucket.  A student calibrated on short sequences that stays flat past its
calibration length while the teacher keeps improving uses less of the context than the teacher
(bench/results/blockwise_smollm2/).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def buckets(seqlen: int) -> list[tuple[int, int]]:
    """[0, 64), [64, 256), [256, 512), [512, 1024), … up to ``seqlen`` (the last one cut there)."""
    edges = [0, 64, 256]
    while edges[-1] < seqlen:
        edges.append(edges[-1] * 2)
    edges = [e for e in edges if e < seqlen] + [seqlen]
    return list(zip(edges[:-1], edges[1:]))


@torch.inference_mode()
def position_nll(model, windows: torch.Tensor) -> torch.Tensor:
    """``[seqlen - 1]`` mean next-token NLL at each position over the rows of ``windows``."""
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for row in windows:
        logits = model(row[None]).logits[0, :-1].float()
        total += F.cross_entropy(logits, row[1:], reduction="none").double()
    return total / windows.shape[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="the teacher first, then students")
    p.add_argument("--data", default="wikitext2", help="evaluation set (default %(default)s)")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from onebit.eval.data import load_text
    from onebit.eval.perplexity import tokenize_text, windows
    from onebit.models import load_model
    from onebit.tokenizers import load_tokenizer

    tok = load_tokenizer(a.models[0])
    win = windows(tokenize_text(tok, load_text(a.data)), a.seqlen, a.windows)
    bks = buckets(a.seqlen)
    print(f"{a.data}: {win.shape[0]} windows x {win.shape[1]} tokens; perplexity of the predicted token "
          f"at positions " + ", ".join(f"{lo}-{hi - 1}" for lo, hi in bks))
    base = None
    for name in a.models:
        nll = position_nll(load_model(name), win)
        ppl = [float(nll[max(lo - 1, 0):hi - 1].mean().exp()) for lo, hi in bks]
        whole = float(nll.mean().exp())
        base = base or ppl + [whole]
        cells = "  ".join(f"{v:9.2f} ({v / b:5.2f}x)" for v, b in zip(ppl + [whole], base))
        print(f"{name}\n  {cells}   (last: all positions)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
