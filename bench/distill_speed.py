"""Seconds per distillation step: fp32, bf16 autocast, bf16 + torch.compile, in one run.

    python bench/distill_speed.py --threads 2
    python bench/distill_speed.py --threads 2 --batch-size 4 --seqlen 512   # the stories3M bar run's shape
    python bench/distill_speed.py --threads 2 --model SMOLLM2_GGUF --method onebit-rank2 \\
        --batch-size 1 --seqlen 2040 --rounds 3 --steps 1 --blockwise   # SmolLM2's 90-minute recipe

End-to-end steps: all settings train the same student on the same random
batches (alpha 1: teacher forward + student forward/backward + AdamW); the
settings alternate in rounds, so a change in the machine's load hits all
alike.  The compiled setting is warmed up (compiled) before timing starts.
``--blockwise`` also times the block-wise stage's step (one decoder block,
``--block`` of the model, trained on its cached inputs, as ``--blockwise-steps``
does) in the same three settings.  Prints the median s/step of each and the
ratios to fp32 and to bf16.
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
SETTINGS = [("fp32", False, False), ("bf16", True, False), ("bf16+compile", True, True)]


def _report(kind: str, times: dict) -> None:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, s in med.items():
        print(f"{kind} {name}: {s:.3f} s/step (median of {len(times[name])})")
    print(f"{kind}: bf16 autocast is {med['fp32'] / med['bf16']:.2f}x faster per step than fp32")
    if "bf16+compile" in med:
        print(f"{kind}: bf16 + torch.compile is {med['bf16'] / med['bf16+compile']:.2f}x faster per step than "
              f"bf16 ({med['fp32'] / med['bf16+compile']:.2f}x than fp32)", flush=True)


def _rounds(steppers: dict, rounds: int, steps: int) -> dict:
    times = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    return times


def time_blocks(teacher, cfg_q, data, a, settings) -> dict:
    """s/step of the block-wise stage's training step on block ``a.block`` (``_train_block`` itself,
    one step per call, on the block's cached inputs)."""
    from onebit.distill import blockwise as bw
    from onebit.surgery import set_submodule

    plan = bw.plan_blocks(teacher, cfg_q)
    cfg = bw.BlockConfig(steps=1, batch_size=a.batch_size, warmup=0)
    x_t, x_s, kw, b = bw.capture_inputs(teacher, plan, data, cfg)
    for i in range(a.block):  # the block's own (teacher) inputs
        x_t = bw.run_block(plan.blocks[i], x_t, kw, b)
    block = plan.blocks[a.block]
    y_t = bw.run_block(block, x_t, kw, b)
    originals = plan.targets(teacher, a.block)
    mods = bw._make_trainable(teacher, plan.handler, plan.targets(teacher, a.block))
    steppers = {}
    for name, bf16, comp in settings:
        c = bw.BlockConfig(steps=1, batch_size=a.batch_size, warmup=0, bf16=bf16, compile=comp)
        steppers[name] = (lambda c=c: bw._train_block(block, mods, x_t, y_t, kw, c, 0))
        for _ in range(2):  # warm-up (and compilation)
            steppers[name]()
    times = _rounds(steppers, a.rounds, a.steps)
    # the passes over the cached rows around each block's training: the teacher block (targets) and the
    # packed student block (the next block's inputs), fp32 vs --bf16, seconds per row of the batch
    bw._pack(teacher, mods, None)
    names = list(mods)
    rows = x_t.shape[0]
    passes = {}

    def per_row(f) -> float:  # the second of two passes
        f()
        t0 = time.perf_counter()
        f()
        return (time.perf_counter() - t0) / rows

    for bf16 in (False, True):
        tag = "bf16" if bf16 else "fp32"
        passes[f"packed student block, {tag}"] = per_row(lambda: bw._advance(teacher, block, names, x_t, kw, 1, bf16))
    for name, mod in originals:  # the teacher back as it was
        set_submodule(teacher, name, mod)
    for bf16 in (False, True):
        passes[f"teacher block, {'bf16' if bf16 else 'fp32'}"] = per_row(lambda: bw.run_block(block, x_t, kw, 1, bf16))
    for k, v in passes.items():
        print(f"block-wise pass, {k}: {v:.3f} s per row of {x_t.shape[1]} tokens")
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories3M"))
    p.add_argument("--method", default="onebit", help="a method spec as `onebit compare` takes (default: onebit)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile setting")
    p.add_argument("--blockwise", action="store_true", help="also time the block-wise stage's step")
    p.add_argument("--block", type=int, default=5, help="the block timed with --blockwise (default: 5)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from onebit.compare import parse_method_spec
    from onebit.distill.student import freeze, student_from_teacher
    from onebit.distill.trainer import TrainConfig, Trainer
    from onebit.models import load_model

    print(machine())
    cfg_q = parse_method_spec(a.method)
    teacher = load_model(a.model)
    for prm in teacher.parameters():
        prm.requires_grad_(False)
    data = torch.randint(3, teacher.config.vocab_size, (64, a.seqlen), generator=torch.Generator().manual_seed(0))
    print(f"{a.method}, batch {a.batch_size} x {a.seqlen} tokens")
    settings = SETTINGS[:2] if a.no_compile else SETTINGS
    if a.blockwise:
        _report("block-wise", time_blocks(teacher, cfg_q, data[:max(4, a.batch_size)], a, settings))
    trainers = {}
    for name, bf16, comp in settings:
        student, qc = student_from_teacher(teacher, cfg_q)
        names = freeze(student, qc["modules"])
        cfg = TrainConfig(steps=1000, batch_size=a.batch_size, bf16=bf16, compile=comp)
        trainers[name] = Trainer(teacher, student, data, cfg, names)
        for _ in range(2 if comp else 1):  # warm-up (and compilation)
            trainers[name].train_step()
    _report("end-to-end", _rounds({n: t.train_step for n, t in trainers.items()}, a.rounds, a.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
