"""Continue a distilled OneBit student for a few hundred steps: what limits the plateau?

    python bench/distill_probe.py out/s3m-distilled-60min --steps 300 --alpha 1
    python bench/distill_probe.py out/s3m-distilled-60min --steps 300 --alpha 0
    python bench/distill_probe.py out/s3m-distilled-60min --steps 200 --latent-scale 10
    python bench/distill_probe.py out/s3m-distilled-60min --steps 100 --vectors-only
    python bench/distill_probe.py out/s3m-distilled-60min --steps 100 --fp32
    python bench/distill_probe.py out/s3m-distilled-60min --steps 100 --cycles 3 --alpha 0

The packed student is read back into its trainable form, which resets every
latent weight to ``sign(W) ⊙ |h gᵀ|`` (``--latent-scale`` multiplies that:
10 leaves the signs practically frozen at this lr).  It is then trained on the
same cached teacher data as ``bench/distill_quality.py`` (4096 × 256, seed 0;
batch order seed 5) at a constant ``--lr`` after 10 warmup steps, and scored
every 100 steps on held-out teacher text (32 windows × 512 tokens generated
with seed 1,000,003, never an evaluation file), teacher alongside.
``--vectors-only`` trains g and h alone; ``--cycles N`` repeats the reset and
``--steps`` N times.  The first lines compare the student's fit (mean KL per
token) on its first 32 training sequences and on the held-out text:

    python bench/distill_probe.py out/s3m-distilled-resets --steps 0 --samples 3072 --seqlen 512 \
        --data-cache /tmp/fresh512

These probes are how the polish stage of
``bench/distill_quality.py --polish`` was found
(``bench/results/sweep_stories3m/README.md``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import machine_line  # bench/common.py

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student", help="packed OneBit checkpoint to continue from")
    p.add_argument("--teacher", default=str(ROOT.parent / "shared" / "models" / "stories3M"))
    p.add_argument("--steps", type=int, default=200,
                   help="steps per cycle (0: only print the sign and fit statistics of the student)")
    p.add_argument("--cycles", type=int, default=1, help="reset the latents and train --steps, this many times")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--reset-every", type=int, default=0, help="reset the latents every k steps, within one run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--latent-scale", type=float, default=1.0)
    p.add_argument("--vectors-only", action="store_true")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--data-cache", default=str(ROOT / "out" / "distill-data"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from onebit.distill.data import teacher_data
    from onebit.distill.student import freeze, reset_latents, student_from_checkpoint
    from onebit.distill.trainer import TrainConfig, Trainer
    from onebit.eval.kld import kl_divergence
    from onebit.eval.perplexity import perplexity
    from onebit.models import load_model

    print(f"machine: {machine_line()}\nsettings: {vars(a)}", flush=True)
    teacher = load_model(a.teacher)
    data = teacher_data(teacher, a.samples, a.seqlen, seed=0, cache_dir=a.data_cache, batch_size=a.gen_batch)
    held = teacher_data(teacher, a.eval_windows, 512, seed=1_000_003, cache_dir=a.data_cache).reshape(-1)
    t_ppl = perplexity(teacher, held, 512, a.eval_windows, progress=False).ppl
    student, qc = student_from_checkpoint(a.student)
    flipped = sum(int((student.get_submodule(n).weight.ge(0) != teacher.get_submodule(n).weight.ge(0)).sum())
                  for n in qc["modules"])
    total = sum(teacher.get_submodule(n).weight.numel() for n in qc["modules"])
    print(f"signs that differ from the fp weights' signs: {flipped / total:.1%} of {total:,d}", flush=True)
    n_fit = min(32, data.shape[0])
    fit, fresh = (kl_divergence(teacher, student.eval(), x.reshape(-1), x.shape[1], batch_size=8).mean_kld
                  for x in (data[:n_fit], held.view(a.eval_windows, 512)))  # one window per row
    print(f"mean KL(teacher || student) per token: {n_fit} training sequences {fit:.4f}, "
          f"held-out teacher text {fresh:.4f}", flush=True)
    if a.steps == 0:
        return 0
    with torch.no_grad():
        for name in qc["modules"]:
            student.get_submodule(name).weight.mul_(a.latent_scale)
    names = freeze(student, qc["modules"])
    if a.vectors_only:
        for p_ in student.parameters():
            if p_.dim() >= 2:
                p_.requires_grad_(False)
        names = [n for n, p_ in student.named_parameters() if p_.requires_grad]
    done = 0

    def show(r):
        if r["step"] % a.eval_every == 0 or r["step"] == a.steps:
            print(f"step {done + r['step']:5d}  held-out teacher text ppl {r['ppl']:8.3f}  "
                  f"({r['ppl'] / t_ppl:.3f}x teacher {t_ppl:.3f})", flush=True)

    for c in range(a.cycles):
        if c:
            reset_latents(student, qc["modules"])
        cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, reset_every=a.reset_every, lr=a.lr,
                          alpha=a.alpha, warmup=10, min_lr_ratio=1.0, eval_every=a.eval_every, eval_windows=a.eval_windows, bf16=not a.fp32, seed=5 + c)
        tr = Trainer(teacher, student, data, cfg, names, eval_ids=held, eval_seqlen=512,
                     on_eval=show if c == 0 else (lambda r: r["step"] and show(r)))
        tr.train()
        done += a.steps
    return 0


if __name__ == "__main__":
    sys.exit(main())
