"""Where in a long window a student loses to its teacher: perplexity by token position.

    python bench/position_nll.py TEACHER STUDENT... [--data wikitext2] [--seqlen 2048] [--windows 8]
    python bench/position_nll.py TEACHER STUDENT --swap q_proj,k_proj --swap gate_proj,up_proj,down_proj

Scores the same ``--windows`` windows of ``--seqlen`` tokens (the project's perplexity windows:
no start token, every position predicted) with each model and prints the perplexity of the tokens
whose position falls in each bucket (0–63, 64–255, 256–511, …), and each student's ratio to the
first model per bucket.  A student calibrated on short sequences that stays flat past its
calibration length while the teacher keeps improving uses less of the context than the teacher
(bench/results/blockwise_smollm2/).

``--swap NAMES`` (repeatable) also scores each student with the linears whose name ends in one of
NAMES (comma-separated, e.g. ``q_proj,k_proj``) put back to the teacher's full-precision layers:
which quantized projections cost the most, and at which positions.
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


def swap_in_teacher(student: torch.nn.Module, teacher: torch.nn.Module, names: list[str]) -> int:
    """Replace every module of ``student`` whose qualified name ends in ``.NAME`` for a NAME of
    ``names`` by the teacher's module at the same path (shared, not copied); returns how many."""
    hits = [n for n, _ in student.named_modules() if any(n.endswith("." + x) for x in names)]
    for n in hits:
        student.set_submodule(n, teacher.get_submodule(n))
    return len(hits)


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
    p.add_argument("--swap", action="append", default=[], metavar="NAMES",
                   help="also score each student with these linears (comma-separated name suffixes) "
                        "taken from the teacher; repeatable")
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
    teacher = load_model(a.models[0])
    base = None

    def report(label, model):
        nonlocal base
        nll = position_nll(model, win)
        ppl = [float(nll[max(lo - 1, 0):hi - 1].mean().exp()) for lo, hi in bks]
        whole = float(nll.mean().exp())
        base = base or ppl + [whole]
        cells = "  ".join(f"{v:9.2f} ({v / b:5.2f}x)" for v, b in zip(ppl + [whole], base))
        print(f"{label}\n  {cells}   (last: all positions)", flush=True)

    report(a.models[0], teacher)
    for name in a.models[1:]:
        report(name, load_model(name))
        for spec in a.swap:
            names = [x.strip() for x in spec.split(",") if x.strip()]
            student = load_model(name)
            n = swap_in_teacher(student, teacher, names)
            if n == 0:
                p.error(f"--swap {spec}: no module of {name} ends in any of {names}")
            report(f"{name} with the teacher's {','.join(names)} ({n} layers)", student)
    return 0


if __name__ == "__main__":
    sys.exit(main())
