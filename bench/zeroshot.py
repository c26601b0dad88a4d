"""Wall time of the whole seven-task zero-shot run, and what sharing the context's pass buys.

    python bench/zeroshot.py [--model ../shared/models/stories3M] [--limit N] [--compare-limit 200] [--threads T]

1. Every task in full (or the first --limit items), scored as ``onebit eval zeroshot`` does
   (context pass shared across choices, batch 32): per-task accuracy and seconds, total wall time.
2. On the first --compare-limit items of each task, the same scoring against the baseline measured
   in this run: every context+continuation run whole (lm-eval's way), same batch size.  The
   log-likelihoods of both are compared too (max |difference|).
The machine (CPU, threads, load average) is printed; on a shared machine the times are noisy.
"""
from __future__ import annotations

import argparse
import time

import torch

from common import machine_line  # bench/common.py

from onebit.eval.tasks import TASKS, load_task, parse_tasks
from onebit.eval.zeroshot import encode_pairs, evaluate_task, loglikelihoods, paper_average
from onebit.models import load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/stories3M")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=None, help="items per task in part 1 (default: all)")
    ap.add_argument("--compare-limit", type=int, default=200, help="items per task in part 2 (0: skip)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). On a CPU shared with other jobs, 1 thread can be "
                    "far faster: every op of a small model waits for all its threads to be scheduled")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}")
    model, tok = load_model(args.model), load_tokenizer(args.model)
    tasks = parse_tasks(args.tasks)
    print(f"model {args.model}; part 1: {'all' if args.limit is None else args.limit} items per task, "
          f"batch {args.batch_size}, shared context pass")
    with torch.no_grad():  # warm-up (first-call overheads are not the scoring's)
        model(torch.ones(2, 16, dtype=torch.long))
    t0 = time.perf_counter()
    results = {}
    for t in tasks:
        docs = load_task(t, limit=args.limit)
        r = evaluate_task(model, tok, t, docs, args.batch_size, share=True)
        results[t] = r
        extra = (f" acc_norm {100 * r.acc_norm:6.2f}" if r.acc_norm is not None else "") + \
            (f" ppl {r.ppl:.2f}" if r.ppl is not None else "")
        n_req = sum(len(d.requests) for d in docs)
        print(f"  {t:14s} n={r.n:6d} ({n_req:6d} requests) acc {100 * r.acc:6.2f}{extra}  {r.seconds:8.1f} s",
              flush=True)
    total = time.perf_counter() - t0
    avg = paper_average(results)
    if avg is not None:
        print(f"  average of the paper's six (acc): {100 * avg:.2f}")
    print(f"total wall time, {len(tasks)} tasks: {total:.1f} s ({total / 60:.1f} min)")

    if args.compare_limit:
        print(f"part 2: first {args.compare_limit} items per task, shared context pass vs whole sequences "
              "(baseline, lm-eval's way), same batch")
        ts = tf = 0.0
        diff = 0.0
        for t in tasks:
            docs = load_task(t, limit=args.compare_limit)
            reqs = encode_pairs(tok, [r for d in docs for r in d.requests])
            a = time.perf_counter()
            full = loglikelihoods(model, reqs, args.batch_size, share=False)
            b = time.perf_counter()
            shared = loglikelihoods(model, reqs, args.batch_size, share=True)
            c = time.perf_counter()
            tf, ts = tf + b - a, ts + c - b
            d = max(abs(x[0] - y[0]) for x, y in zip(full, shared))
            diff = max(diff, d)
            print(f"  {t:14s} whole {b - a:7.2f} s  shared {c - b:7.2f} s  speedup {(b - a) / (c - b):5.2f}x  "
                  f"max |Δ loglik| {d:.1e}", flush=True)
        print(f"  all tasks      whole {tf:7.2f} s  shared {ts:7.2f} s  speedup {tf / ts:5.2f}x  "
              f"max |Δ loglik| {diff:.1e}")
    print(f"machine at the end: {machine_line()}")


if __name__ == "__main__":
    main()
