"""Seconds per distillation step, fp32 vs bf16 autocast, measured in one run (stories3M → OneBit).

    python bench/distill_speed.py --threads 2

Both settings train the same student on the same random batches (8 × 256
tokens, α 1: teacher forward + student forward/backward + AdamW); the settings
alternate in rounds, so a change in the machine's load hits both alike.
Prints the median s/step of each and the ratio fp32 / bf16.
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
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from onebit.distill.student import freeze, student_from_teacher
    from onebit.distill.trainer import TrainConfig, Trainer
    from onebit.methods.onebit import OneBitConfig
    from onebit.models import load_model

    print(machine())
    teacher = load_model(a.model)
    data = torch.randint(3, teacher.config.vocab_size, (64, 256), generator=torch.Generator().manual_seed(0))
    trainers = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        student, qc = student_from_teacher(teacher, OneBitConfig())
        names = freeze(student, qc["modules"])
        trainers[name] = Trainer(teacher, student, data, TrainConfig(steps=1000, batch_size=8, bf16=bf16), names)
        for _ in range(2):  # warm-up
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
