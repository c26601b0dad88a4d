"""Busy machine: slowdown of onebit's workloads under a CPU hog, with onebit's thread policy and without.

    nice -n 19 python bench/busy.py                      # idle, then under 2 busy-loop processes
    python bench/busy.py --hogs 2 --variants policy,off,spin,one --max-seconds 20

In one run: each workload runs in a fresh subprocess (libgomp reads its environment when torch is
imported, so the policy can only be toggled per process) with the policy on (``policy``, the default
a user gets) and off (``off``: ONEBIT_THREAD_POLICY=off, torch's defaults); optional variants:
``spin`` (the policy with OMP_NUM_THREADS=<cpus>, i.e. the short spin alone), ``spinN`` (threads
for every CPU and GOMP_SPINCOUNT=N: a load that arrives after the start meets that spin) and ``one``
(OMP_NUM_THREADS=1).  First on the machine as it is ("idle"), then with ``--hogs`` busy-loop
processes that this script starts (at its own niceness) and stops.  Workloads (stories3M):

  demo     a distillation step of `onebit demo` (batch 8 x 128 tokens, teacher + student)
  distill  a distillation step at `onebit distill`'s defaults (batch 8 x 256)
  ppl      one 256-token window of `onebit eval ppl` on the 1-bit model
  decode   one greedy token of batch-1 generation with the 1-bit model (32 per call)

Each worker warms up with one step, then times steps until --steps or --max-seconds; the median is
reported.  Prints busy/idle per workload and variant, the load, the CPU and its flags.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "stories3M"
WORKLOADS = ("demo", "distill", "ppl", "decode")
UNITS = {"demo": "s/step", "distill": "s/step", "ppl": "s/window", "decode": "ms/token"}


def variant_env(name: str, cpus: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ONEBIT_THREAD_POLICY")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if name == "off":
        env["ONEBIT_THREAD_POLICY"] = "off"
    elif name == "spin":
        env["OMP_NUM_THREADS"] = str(cpus)
    elif name == "one":
        env["OMP_NUM_THREADS"] = "1"
    elif name.startswith("spin") and name[4:].isdigit():   # spinN: all CPUs' threads, GOMP_SPINCOUNT=N
        env["OMP_NUM_THREADS"], env["GOMP_SPINCOUNT"] = str(cpus), name[4:]
    elif name != "policy":
        raise SystemExit(f"busy.py: error: unknown variant {name!r} (policy, off, spin, spinN, one)")
    return env


# --------------------------------------------------------------------------- worker (a subprocess)
def worker(name: str, model_dir: str, steps: int, max_seconds: float) -> None:
    import onebit  # first: the thread policy (or not, by the environment) before torch loads
    from onebit import threads

    import torch

    from onebit.models import load_model

    teacher = load_model(model_dir)
    gen = torch.Generator().manual_seed(0)
    if name in ("demo", "distill"):
        from onebit.distill.student import freeze, student_from_teacher
        from onebit.distill.trainer import TrainConfig, Trainer

        seqlen, lr = (128, 2.5e-3) if name == "demo" else (256, 2e-3)
        data = torch.randint(3, teacher.config.vocab_size, (64, seqlen), generator=gen)
        student, qc = student_from_teacher(teacher, onebit.OneBitConfig())
        names = freeze(student, qc["modules"])
        tr = Trainer(teacher, student, data, TrainConfig(steps=10_000, batch_size=8, lr=lr, warmup=5),
                     names, progress=False)
        step, per = tr.train_step, 1
    else:
        import copy

        q = onebit.quantize(copy.deepcopy(teacher), onebit.OneBitConfig(), progress=False)
        if name == "ppl":
            from onebit.eval.perplexity import perplexity

            ids = torch.randint(3, teacher.config.vocab_size, (256,), generator=gen)
            step, per = (lambda: perplexity(q, ids, 256, 1, progress=False)), 1
        else:
            ids = torch.randint(3, teacher.config.vocab_size, (1, 8), generator=gen)
            n = 32

            @torch.no_grad()
            def step():
                q.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
            per = n / 1000.0  # ms per token
    step()  # warm-up
    times, t_end = [], time.perf_counter() + max_seconds
    while len(times) < steps and (not times or time.perf_counter() < t_end):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) / per)
    times.sort()
    print(json.dumps({"median": times[len(times) // 2], "n": len(times), "threads": torch.get_num_threads(),
                      "policy": threads.describe()}), flush=True)


# --------------------------------------------------------------------------- parent
def cpu_info() -> tuple[str, str]:
    model, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")
    return model, " ".join(f for f in keep if f in flags)


def load_line() -> str:
    try:
        f = open("/proc/loadavg").read().split()
        return f"load {f[0]} {f[1]} {f[2]}, runnable now {f[3].split('/')[0]}"
    except OSError:
        return "load ?"


def run_worker(name: str, variant: str, a, cpus: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--model", a.model,
           "--steps", str(a.steps), "--max-seconds", str(a.max_seconds)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=variant_env(variant, cpus), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"busy.py: error: worker {name}/{variant} failed:\n{r.stderr[-2000:]}")
    res = json.loads(lines[-1])
    res["wall"] = wall
    return res


def fmt(v: float) -> str:
    return f"{v:9.4f}" if v < 10 else f"{v:9.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--hogs", type=int, default=2, help="busy-loop processes of the busy phase")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--variants", default="policy,off")
    p.add_argument("--steps", type=int, default=5, help="timed steps per worker (at most)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="timed seconds per worker (about)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a.worker, a.model, a.steps, a.max_seconds)
        return 0
    workloads = [w for w in a.workloads.split(",") if w]
    variants = [v for v in a.variants.split(",") if v]
    for w in workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r} ({', '.join(WORKLOADS)})")
    if a.hogs < 1 or a.steps < 1:
        p.error("--hogs and --steps must be at least 1")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    for v in variants:
        variant_env(v, cpus)
    model, flags = cpu_info()
    print(f"CPU: {model}, {cpus} CPUs usable, flags: {flags}; niceness {os.nice(0)}; python {sys.version.split()[0]}")
    print(f"model {a.model}; workloads {', '.join(workloads)}; variants {', '.join(variants)}; "
          f"busy phase: {a.hogs} busy-loop processes at this niceness")
    res: dict = {}
    hogs = []
    t_start = time.perf_counter()
    try:
        for phase in ("idle", "busy"):
            if phase == "busy":
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.hogs)]
                time.sleep(2)
            print(f"\n== {phase}: {load_line()}", flush=True)
            for w in workloads:
                for v in variants:
                    r = run_worker(w, v, a, cpus)
                    res[(phase, w, v)] = r
                    print(f"   {w:8s} {v:7s} {fmt(r['median'])} {UNITS[w]:9s} (n={r['n']}, {r['threads']} threads, "
                          f"worker {r['wall']:.0f}s; {r['policy']})", flush=True)
            print(f"   {load_line()}")
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print(f"\n== slowdown busy/idle ({a.hogs} hogs on {cpus} CPUs; target <= ~3x); total {time.perf_counter() - t_start:.0f}s")
    print(f"   {'workload':8s} " + " ".join(f"{v + ' idle':>12s} {v + ' busy':>12s} {v + ' ratio':>12s}" for v in variants))
    for w in workloads:
        cells = []
        for v in variants:
            i, b = res[("idle", w, v)]["median"], res[("busy", w, v)]["median"]
            cells.append(f"{fmt(i):>12s} {fmt(b):>12s} {b / i:11.1f}x")
        print(f"   {w:8s} " + " ".join(cells) + f"   ({UNITS[w]})")
    if "policy" in variants and "off" in variants:
        print("   busy, off/policy: " + ", ".join(
            f"{w} {res[('busy', w, 'off')]['median'] / res[('busy', w, 'policy')]['median']:.1f}x" for w in workloads)
            + "; idle, off/policy: " + ", ".join(
            f"{w} {res[('idle', w, 'off')]['median'] / res[('idle', w, 'policy')]['median']:.2f}x" for w in workloads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
