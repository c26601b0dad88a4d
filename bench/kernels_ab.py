"""A/B of the 1-bit CPU kernel against an earlier revision of ``onebit_cpu.cpp``, in one process.

The old source (``git show REV:src/onebit/kernels/cpu/onebit_cpu*.cpp`` and its headers) is built as a second
extension (``onebit_cpu_ab_old``) next to the current one; both are called alternately on the same
cold packed weights (copies cycled), and the median per-pair ratio old/new is printed (> 1: the
current build is faster).  Each default path of the chosen ISA is compared; with ``--isa avx2`` the
current build's int8-activation path (``i8``) is timed too, and MKL / oneDNN are capped at AVX2
(the script re-runs itself with ``MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``).
``--algo NAME`` (an ``ONEBIT_CPU_ALGO`` value, e.g. ``i8``) compares that path in both builds instead.
Before timing, every copy is called once by each build (untimed): paths that cache a transposed
layout of the weight (``fxlut``, ``i8`` on AVX2) build it there, as decode's first token does.

    python bench/kernels_ab.py --rev eaf4dfa --isa avx512 --dtypes float32 bfloat16
    python bench/kernels_ab.py --rev eaf4dfa --isa avx2
    python bench/kernels_ab.py --rev a74498d --isa avx2 --algo i8 --shapes 5632x2048 2048x5632 2048x2048 --batch 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
NEVER = 1 << 40
ISA = {"scalar": 0, "avx2": 1, "avx512": 2}


def build_old(rev: str, d: Path):
    from torch.utils import cpp_extension

    from onebit.kernels.cpu import loader

    def show(path: str) -> bytes:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True).stdout

    # the 1-bit kernel's files at REV: onebit_cpu.cpp alone, or (from 1cffeec) onebit_cpu*.cpp + headers
    # (from 6555a5a also attention_cpu.cpp, in the same extension); the quant ops are another one
    tree = "src/onebit/kernels/cpu/"
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, tree], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    sources = []
    for path in names:
        name = Path(path).name
        if name.endswith(".h") or (name.endswith(".cpp") and not name.startswith("quant_")):
            (d / name).write_bytes(show(path))
            if name.endswith(".cpp"):
                sources.append(str(d / name))
    return cpp_extension.load(name="onebit_cpu_ab_old", sources=sorted(sources), build_directory=str(d),
                              extra_cflags=list(loader.CFLAGS), extra_ldflags=list(loader.LDFLAGS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="git revision of the old onebit_cpu.cpp")
    ap.add_argument("--isa", default="avx512", choices=list(ISA))
    ap.add_argument("--shapes", nargs="+", default=["5632x2048", "2048x5632"], metavar="OUTxIN")
    ap.add_argument("--dtypes", nargs="+", default=["float32"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--pairs", type=int, default=15, help="alternating old/new calls per case")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--algo", default=None, help="ONEBIT_CPU_ALGO path compared in both builds "
                    "(default: each build's default path, and with --isa avx2 the current i8 too)")
    args = ap.parse_args()
    if args.isa == "avx2" and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        # as bench/kernel_speed.py --isa avx2: the GEMM path's BLAS capped at AVX2 too (read at load)
        os.environ.update(MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
        os.execv(sys.executable, [sys.executable, *sys.argv])
    torch.set_num_threads(args.threads)

    from onebit.formats.packing import pack_signs
    from onebit.kernels.cpu import loader
    from onebit.kernels.dispatch import _ALGO

    if args.algo is not None and args.algo not in _ALGO:
        sys.exit(f"kernels_ab.py: --algo must be one of {sorted(_ALGO)}, got {args.algo!r}")
    algo = 0 if args.algo is None else _ALGO[args.algo]

    with tempfile.TemporaryDirectory() as tmp:
        old = build_old(args.rev, Path(tmp))
        new = loader.load()
        isa = ISA[args.isa]
        print(f"old: {args.rev}, new: working tree; ISA {args.isa}, path {args.algo or 'default'}, "
              f"{args.threads} thread(s), "
              f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
        for shape in args.shapes:
            o, i = (int(v) for v in shape.lower().split("x"))
            p = pack_signs(torch.randn(o, i))
            ps = [p.clone() for _ in range(max(1, (64 << 20) // p.numel()))]
            g, h = torch.rand(i).half(), torch.rand(o).half()
            for dt in args.dtypes:
                for b in args.batch:
                    x = torch.randn(b, i).to(getattr(torch, dt))
                    it = [0]

                    def call(mod, thr, algo):
                        it[0] += 1
                        return mod.binary_linear(x, ps[it[0] % len(ps)], g, h, i, isa, thr, algo)

                    fs = {"old": lambda: call(old, NEVER, algo), "new": lambda: call(new, -1, algo)}
                    if args.isa == "avx2" and args.algo is None:
                        fs["new i8"] = lambda: call(new, NEVER, _ALGO["i8"])
                    for f in fs.values():  # untimed: each copy's first call (a cached layout is built)
                        for _ in ps:
                            f()
                    t = {k: [] for k in fs}
                    for r in range(args.pairs + 1):
                        for k, f in fs.items():
                            t0 = time.perf_counter()
                            f()
                            if r:
                                t[k].append(time.perf_counter() - t0)
                    cells = [f"old {statistics.median(t['old']) * 1e3:.3f} ms"]
                    for k in list(fs)[1:]:
                        rat = statistics.median(a / c for a, c in zip(t["old"], t[k]))
                        cells.append(f"{k} {statistics.median(t[k]) * 1e3:.3f} ms (old/{k} {rat:.2f})")
                    print(f"{o}x{i} {dt} batch {b}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
