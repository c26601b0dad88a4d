"""Teacher-data generation speed (stories3M): the token sampler, then µs per generated token.

    python bench/teacher_data_speed.py --threads 2

1. The sampler alone, on one decoding step's probabilities (``--batch`` rows ×
   the vocabulary): ``torch.multinomial`` (the previous sampler) against
   :func:`onebit.calibration.sample_rows` (inverse CDF), alternating in rounds,
   median ms per call and the ratio.
2. :func:`onebit.calibration.teacher_samples` end to end, ``--batches`` batches of
   ``--batch`` sequences × ``--seqlen`` tokens, timed per batch (the first batch
   of a process is slower, probably because the growing KV cache is fresh memory).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common import machine_line  # bench/common.py

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories3M"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from onebit.calibration import sample_rows, teacher_samples
    from onebit.models import load_model

    print(f"machine: {machine_line()}", flush=True)
    model = load_model(a.model)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(a.batch, vocab, generator=gen) * 3, -1)
    times = {"multinomial": [], "sample_rows": []}
    for _ in range(a.rounds):
        for name, fn in (("multinomial", lambda: torch.multinomial(probs, 1, generator=gen)),
                         ("sample_rows", lambda: sample_rows(probs, gen))):
            fn()
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            times[name].append((time.perf_counter() - t0) / 10 * 1e3)
    m, s = (statistics.median(times[k]) for k in ("multinomial", "sample_rows"))
    print(f"sampler, {a.batch} x {vocab} probabilities: multinomial {m:.2f} ms, sample_rows {s:.2f} ms "
          f"({m / s:.1f}x faster)", flush=True)

    per = []
    for i in range(a.batches):
        t0 = time.perf_counter()
        teacher_samples(model, a.batch, a.seqlen, seed=i, batch_size=a.batch)
        dt = time.perf_counter() - t0
        per.append(dt / (a.batch * a.seqlen) * 1e6)
        print(f"teacher_samples batch {i}: {a.batch} x {a.seqlen} in {dt:.1f}s = {per[-1]:.0f} us/token", flush=True)
    if len(per) > 1:
        print(f"after the first batch: median {statistics.median(per[1:]):.0f} us/token")
    print(f"machine at the end: {machine_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
