"""Seconds per distillation step: fp32, bf16 autocast, bf16 + torch.compile, in one run (stories3M → OneBit).

    python bench/distill_speed.py --threads 2
    python bench/distill_speed.py --threads 2 --batch-size 4 --seqlen 512   # the bar run's shape

All settings train the same student on the same random batches (α 1:
teacher forward + student forward/backward + AdamW); the settings alternate in
rounds, so a change in the machine's load hits all alike.  The compiled
setting is warmed up (compiled) before timing starts.  Prints the median s/step
of each and the ratios to fp32 and to bf16.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common import machine  # bench/common.py

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories3M"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile setting")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from onebit.distill.student import freeze, student_from_teacher
    from onebit.distill.trainer import TrainConfig, Trainer
    from onebit.methods.onebit import OneBitConfig
    from onebit.models import load_model

    print(machine())
    teacher = load_model(a.model)
    data = torch.randint(3, teacher.config.vocab_size, (64, a.seqlen), generator=torch.Generator().manual_seed(0))
    print(f"batch {a.batch_size} x {a.seqlen} tokens")
    settings = [("fp32", False, False), ("bf16", True, False)]
    if not a.no_compile:
        settings.append(("bf16+compile", True, True))
    trainers = {}
    for name, bf16, comp in settings:
        student, qc = student_from_teacher(teacher, OneBitConfig())
        names = freeze(student, qc["modules"])
        cfg = TrainConfig(steps=1000, batch_size=a.batch_size, bf16=bf16, compile=comp)
        trainers[name] = Trainer(teacher, student, data, cfg, names)
        for _ in range(3):  # warm-up (and compilation)
            trainers[name].train_step()
    times = {name: [] for name in trainers}
    for _ in range(a.rounds):
        for name, tr in trainers.items():
            for _ in range(a.steps):
                t0 = time.perf_counter()
                tr.train_step()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, s in med.items():
        print(f"{name}: {s:.3f} s/step (median of {len(times[name])})")
    print(f"bf16 autocast is {med['fp32'] / med['bf16']:.2f}x faster per step than fp32")
    if "bf16+compile" in med:
        print(f"bf16 + torch.compile is {med['bf16'] / med['bf16+compile']:.2f}x faster per step than bf16 "
              f"({med['fp32'] / med['bf16+compile']:.2f}x than fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
