"""Distil a model (stories3M by default) into OneBit: perplexity vs training tokens and wall time.

    python bench/distill_quality.py                       # 60-minute budget, everything counted
    python bench/distill_quality.py --minutes 5 --tag quick
    python bench/distill_quality.py --steps 400 --eval-on teacher --tag sweep   # a hyper-parameter trial
    python bench/distill_quality.py --device cuda --model SmolLM2.gguf --eval-data wikitext2 \
        --eval-seqlen 2048 --final-data wikitext2 c4 ...  # a GPU run: bench/gpu_distill_smollm2.sh

The student trains on sequences the fp teacher generates (cached, never the
evaluation text).  With ``--steps 0`` (default) the cosine schedule is fitted
to the budget: teacher data, a short step timing, training and the periodic
evaluations all end within ``--minutes``.  Every ``--eval-every`` steps the
student's perplexity is measured on the first ``--eval-windows`` windows of
``--eval-seqlen`` (512) tokens of ``--eval-data`` (the TinyStories validation
sample; evaluation only) - or, with ``--eval-on teacher``, of held-out teacher
text, which is what hyper-parameter trials should look at - with the fp teacher
on the same windows alongside.  At the end both are scored on every window of
each ``--final-data`` text (default: the evaluation text; TinyStories: 243 × 512,
as bench/svid_quality.py).  Writes bench/results/distill_<tag>.csv (rows appear
as the run goes) and .png, prints the machine and the CPU load, and with
``--save DIR`` writes the packed student for ``onebit eval``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

from common import machine_line  # bench/common.py

ROOT = Path(__file__).resolve().parents[1]


def plot(rows, teacher_ppl, png, title, text="TinyStories", target=2.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "tokens", "training tokens"), (axes[1], "wall_s", "wall time (s)")):
        ax.plot([r[key] for r in rows], [r["ppl_student"] for r in rows], "o-", label="OneBit student")
        ax.axhline(teacher_ppl, color="k", ls="--", label=f"fp teacher ({teacher_ppl:.2f})")
        ax.axhline(target * teacher_ppl, color="r", ls=":", label=f"{target:g}× teacher (target)")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{text} perplexity")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def fit_steps(a, teacher, student, data, names, eval_ids, budget_s: float) -> int:
    """Steps that fit ``budget_s``: time 3 + 8 steps and one evaluation on a throwaway copy of the student."""
    import copy

    from onebit.distill.trainer import TrainConfig, Trainer

    t0 = time.perf_counter()
    cfg = TrainConfig(steps=1000, batch_size=a.batch_size, lr=a.lr, alpha=a.alpha, eval_windows=a.eval_windows,
                      bf16=a.bf16, compile=a.compile)
    tr = Trainer(teacher, copy.deepcopy(student), data, cfg, names, eval_ids=eval_ids, eval_seqlen=a.eval_seqlen,
                 info=a.info)
    for _ in range(3):  # warm-up
        tr.train_step()
    t1 = time.perf_counter()
    for _ in range(8):
        tr.train_step()
    step_s = (time.perf_counter() - t1) / 8
    t2 = time.perf_counter()
    tr.evaluate()
    eval_s = time.perf_counter() - t2
    budget_s -= time.perf_counter() - t0
    per_step = step_s + (eval_s / a.eval_every if a.eval_every else 0.0)
    steps = max(1, int(a.fit_safety * budget_s / per_step))
    print(f"schedule fitted to the budget: {step_s:.2f} s/step, {eval_s:.1f} s/evaluation, "
          f"{budget_s / 60:.1f} min left -> {steps} steps", flush=True)
    return steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories3M"))
    p.add_argument("--tag", default="stories3m")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="wall-time budget for teacher data + training (+ periodic evaluations)")
    p.add_argument("--steps", type=int, default=0,
                   help="schedule length (cosine over these steps); 0 (default): fit the schedule to the "
                   "budget - time a few steps and one evaluation first, then choose the steps so that "
                   "teacher data + training + periodic evaluations end within --minutes")
    p.add_argument("--fit-safety", type=float, default=0.95, metavar="F",
                   help="with --steps 0, plan the steps for this fraction of the time left after the step "
                   "timing (default %(default)s; the budget still stops training if steps run slower)")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--gen-batch", type=int, default=256,
                   help="sequences the teacher generates at once (a tiny model generates far more tokens/s "
                   "in larger batches; the samples depend on it, so it is part of the cache key)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-vectors", type=float, default=None)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lm-weight", type=float, default=0.0)
    p.add_argument("--latent-clip", type=float, default=0.0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU (AVX512-BF16: 1.55x faster per step, bench/distill_speed.py)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (1.6x faster per step here, bench/distill_speed.py; "
                   "the compile time counts against the budget)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--layernorm", action="store_true")
    p.add_argument("--method", default="onebit", help="onebit (default) or another trainable method, e.g. q1_0")
    p.add_argument("--foldable", action="store_true",
                   help="onebit: the tied form `onebit export` writes as llama.cpp's Q1_0 exactly")
    p.add_argument("--train-norms", action="store_true", help="also train the RMSNorm weights (frozen by default)")
    p.add_argument("--polish", type=float, default=0.0, metavar="FRAC",
                   help="fraction of the steps given to a second stage: latents reset to sign(W)|h g^T| "
                   "(distill.student.reset_latents), KL only (--polish-alpha), constant --polish-lr after "
                   "a short warmup (default 0: one stage)")
    p.add_argument("--reset-every", type=int, default=0, metavar="K",
                   help="stage 1 resets its latents every K steps (distill.student.reset_latents; 0: never)")
    p.add_argument("--polish-reset-every", type=int, default=0, metavar="K",
                   help="the polish stage resets its latents again every K steps (0: only at its start)")
    p.add_argument("--polish-lr", type=float, default=5e-4)
    p.add_argument("--polish-alpha", type=float, default=0.0)
    p.add_argument("--polish-min-lr-ratio", type=float, default=1.0,
                   help="cosine floor of the polish stage's lr (default 1: constant)")
    p.add_argument("--average-last", type=float, default=0.0, metavar="FRAC",
                   help="average the parameters over the last FRAC of the last stage's steps (SWA, "
                   "onebit.distill.averaging); the final scores are given with and without the average "
                   "(default: 0, off)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--eval-data", default="tinystories",
                   help="text of the periodic evaluation: tinystories (default), wikitext2, c4 or a file")
    p.add_argument("--eval-seqlen", type=int, default=512, help="window of every evaluation (default 512)")
    p.add_argument("--final-data", nargs="+", default=None, metavar="TEXT",
                   help="texts scored at the end on every window (default: --eval-data)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--target-ratio", type=float, default=2.0, help="the plot's target line, × the teacher's ppl")
    p.add_argument("--eval-on", choices=["data", "tinystories", "teacher"], default="data",
                   help="what the periodic evaluation measures: --eval-data (an evaluation file; "
                   "'tinystories' is the old name of this choice), or held-out teacher-generated text "
                   "(another seed) - use this one to choose hyper-parameters without looking at the "
                   "evaluation file")
    p.add_argument("--final-windows", type=int, default=None, help="default: every window")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="also write the distilled student as a packed checkpoint (for onebit eval ...)")
    p.add_argument("--data-cache", default=str(ROOT / "out" / "distill-data"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a CPU shared with other jobs, 2 threads were "
                   "up to 30x slower per decoding step than 1)")
    a = p.parse_args(argv)
    if not 0 < a.fit_safety <= 1:
        p.error(f"--fit-safety must be in (0, 1], got {a.fit_safety}")
    torch.set_num_threads(a.threads)
    from onebit.distill import dist

    a.info = dist.init(a.device)
    dev = a.info.device
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 teacher's generation and evaluation
        torch.backends.cudnn.allow_tf32 = True

    from onebit.distill.data import teacher_data
    from onebit.distill.student import freeze, student_from_teacher
    from onebit.distill.trainer import TrainConfig, Trainer
    from onebit.eval.data import load_text
    from onebit.eval.perplexity import perplexity, tokenize_text
    from onebit.methods.onebit import OneBitConfig
    from onebit.models import load_model, load_tokenizer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / f"distill_{a.tag}.csv", out / f"distill_{a.tag}.png"
    print(f"machine: {machine_line()}", flush=True)
    print(f"settings: { {k: v for k, v in vars(a).items() if k != 'info'} }", flush=True)
    if dev.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}", flush=True)
    t_load = time.perf_counter()
    teacher = load_model(a.model, device=str(dev))
    tok = load_tokenizer(a.model)
    print(f"teacher loaded in {time.perf_counter() - t_load:.1f}s", flush=True)
    texts = {name: tokenize_text(tok, load_text(name)) for name in dict.fromkeys([a.eval_data, *(a.final_data or [])])}
    eval_ids = texts[a.eval_data]
    what = a.eval_data
    if a.eval_on == "teacher":  # held-out teacher samples: a seed the training data never uses
        eval_ids = teacher_data(teacher, a.eval_windows, a.eval_seqlen, seed=1_000_003,
                                cache_dir=a.data_cache).reshape(-1)
        what = "held-out teacher text"
    t_ppl = perplexity(teacher, eval_ids, a.eval_seqlen, a.eval_windows, progress=False).ppl
    print(f"fp teacher, {a.eval_windows} windows x {a.eval_seqlen} of {what}: ppl {t_ppl:.3f}", flush=True)

    t0 = t_begin = time.perf_counter()
    data = teacher_data(teacher, a.samples, a.seqlen, seed=0, cache_dir=a.data_cache, progress=True,
                        batch_size=a.gen_batch)
    t_data = time.perf_counter() - t0
    print(f"teacher data: {a.samples} x {a.seqlen} tokens in {t_data:.0f}s (cached for later runs)", flush=True)

    if a.method == "onebit":
        qcfg = OneBitConfig(layernorm=a.layernorm, foldable=a.foldable)
    else:
        from onebit.registry import get_handler_cls

        qcfg = get_handler_cls(a.method).config_cls()
    student, qc = student_from_teacher(teacher, qcfg)
    names = freeze(student, qc["modules"], train_norms=a.train_norms)
    steps = a.steps or fit_steps(a, teacher, student, data, names, eval_ids,
                                 a.minutes * 60 - (time.perf_counter() - t_begin))
    cfg = TrainConfig(steps=steps, batch_size=a.batch_size, lr=a.lr, lr_vectors=a.lr_vectors, alpha=a.alpha,
                      temperature=a.temperature, lm_weight=a.lm_weight, warmup=a.warmup,
                      min_lr_ratio=a.min_lr_ratio, eval_every=a.eval_every, eval_windows=a.eval_windows,
                      latent_clip=a.latent_clip, reset_every=a.reset_every, bf16=a.bf16,
                      compile=a.compile, average_last=0.0 if a.polish else a.average_last)
    rows = []
    f = open(csv_path, "w", newline="")
    w = csv.DictWriter(f, ["step", "tokens", "wall_s", "ppl_student", "ppl_teacher", "ratio", "windows"])
    w.writeheader()

    def on_eval(r):
        if r.get("averaged") is False:  # the last step before averaging: its final scores come at the end
            print(f"step {r['step']:4d}  before averaging: ppl {r['ppl']:10.3f}  ({r['ppl'] / t_ppl:.2f}x teacher)",
                  flush=True)
            return
        row = {"step": r["step"], "tokens": r["tokens"], "wall_s": r["wall"], "ppl_student": round(r["ppl"], 4),
               "ppl_teacher": round(t_ppl, 4), "ratio": round(r["ppl"] / t_ppl, 4), "windows": a.eval_windows}
        rows.append(row)
        w.writerow(row)
        f.flush()
        print(f"step {r['step']:4d}  tokens {r['tokens']:8d}  train wall {r['wall']:7.0f}s  "
              f"ppl {r['ppl']:10.3f}  ({r['ppl'] / t_ppl:.2f}x teacher)  load {os.getloadavg()[0]:.1f}",
              flush=True)

    polish = int(round(steps * a.polish))
    if polish:
        cfg.steps = steps - polish
        print(f"stage 1: {cfg.steps} steps (lr {a.lr}, alpha {a.alpha}); stage 2 (polish): {polish} steps "
              f"(latents reset, lr {a.polish_lr}, alpha {a.polish_alpha})", flush=True)
    tr = Trainer(teacher, student, data, cfg, names, eval_ids=eval_ids, eval_seqlen=a.eval_seqlen, progress=False,
                 on_eval=on_eval, info=a.info)
    tr.train(time_limit=a.minutes * 60 - (time.perf_counter() - t_begin))
    if polish and tr.step == cfg.steps:
        from onebit.distill.stages import polish as polish_stage

        first = tr

        def on_eval2(r):
            if r["step"]:  # step 0 of stage 2 = the end of stage 1
                on_eval({**r, "step": r["step"] + first.step, "tokens": r["tokens"] + first.tokens,
                         "wall": r["wall"] + first.elapsed})

        tr = polish_stage(first, polish, lr=a.polish_lr, alpha=a.polish_alpha, min_lr_ratio=a.polish_min_lr_ratio,
                          reset_every=a.polish_reset_every, average_last=a.average_last, modules=qc["modules"],
                          on_eval=on_eval2,
                          time_limit=a.minutes * 60 - (time.perf_counter() - t_begin))
        done = (first.step, first.tokens, first.elapsed)
    else:
        done = (0, 0, 0.0)
    t_total = time.perf_counter() - t_begin
    if tr.step < tr.cfg.steps:  # stopped by the time budget: one last point
        print(f"the --minutes budget stopped training {tr.cfg.steps - tr.step} steps before the planned "
              f"end of this stage", flush=True)
        tr.finish()
    n_steps, n_tokens, t_train = tr.step + done[0], tr.tokens + done[1], tr.elapsed + done[2]
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else machine_line()
    plot(rows, t_ppl, png_path, f"{Path(a.model).name} → {a.method}, {where}",
         text=what if a.eval_on != "teacher" else "held-out teacher text", target=a.target_ratio)
    fw = a.final_windows
    for name in a.final_data or [a.eval_data]:
        ids, seq = texts[name], (512 if name == "tinystories" else a.eval_seqlen)
        fs = perplexity(student, ids, seq, fw, progress=False).ppl
        ft = perplexity(teacher, ids, seq, fw, progress=False).ppl
        n = ids.numel() // seq if fw is None else fw
        what_s = "student"
        if tr.replaced is not None:  # averaged: score the last step's parameters too, then put the mean back
            tr.replaced.swap()
            fr = perplexity(student, ids, seq, fw, progress=False).ppl
            tr.replaced.swap()
            print(f"final ({n} windows x {seq}, {name}): the last step's parameters {fr:.3f} = {fr / ft:.2f}x",
                  flush=True)
            what_s = f"student averaged over its last {tr.replaced.count} steps"
        print(f"final ({n} windows x {seq}, {name}): teacher {ft:.3f}, {what_s} {fs:.3f} "
              f"= {fs / ft:.2f}x after {n_steps} steps, {n_tokens:,d} tokens, {t_train / 60:.1f} min training "
              f"(+{t_data / 60:.1f} min teacher data; {t_total / 60:.1f} min in all, evaluations and step timing "
              "included)", flush=True)
    print(f"machine at the end: {machine_line()}")
    print(f"wrote {csv_path} and {png_path}")
    if a.save:
        from onebit.distill.student import pack_student
        from onebit.formats.checkpoint import save_checkpoint

        student.to("cpu")  # packed checkpoints are written from host tensors
        ledger = save_checkpoint(pack_student(student, qc), a.save, tokenizer=tok, source=a.model, overwrite=True)
        print(f"wrote the packed student to {a.save} ({ledger.summary()['total_bytes'] / 2**20:.2f} MiB)")
    f.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
