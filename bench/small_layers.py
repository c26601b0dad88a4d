"""Per-call time of small packed layers at batch 1: dense F.linear, the C++ kernels called
directly (no dispatch) and the op through torch.ops (what a model runs), warm weights.

    python bench/small_layers.py --threads 2
    ONEBIT_CPU_PAR_BYTES=1 python bench/small_layers.py --threads 2   # split every loop (before par_grain)

The per-call costs that dominate a small layer: the Python dispatch of the op (torch.ops ->
kernels/dispatch.py -> the C++ function) and the wake-up of the other threads (ONEBIT_CPU_PAR_BYTES,
the work below which a loop runs on the calling thread; read once per process).  Prints µs per call,
medians of 5 rounds of --calls calls; docs/kernels.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from common import machine_line  # bench/common.py

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((192, 576), (576, 576), (1536, 576), (256, 2048), (2048, 2048))


def per_call_us(f, calls: int) -> float:
    for _ in range(50):
        f()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        ts.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(ts)[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    sys.path.insert(0, str(ROOT / "tests" / "kernels"))
    from _cases import binary_layer, make_x  # noqa: E402

    import onebit.kernels  # noqa: F401  registers the C++ backend
    from onebit.kernels.cpu import loader
    from onebit.kernels.dispatch import _ALGO

    mod = loader.load()
    if mod is None:
        sys.exit(f"bench/small_layers.py: error: the C++ kernels did not build: {loader.build_error()}")
    print(f"machine: {machine_line()}; ONEBIT_CPU_PAR_BYTES={os.environ.get('ONEBIT_CPU_PAR_BYTES', 'default')}")
    paths = [("avx2 i8", 1, "i8"), ("avx2 exact", 1, "simd")]
    if mod.best_isa() == 2:
        paths += [("avx512 exact", 2, "simd"), ("avx512 i8", 2, "i8")]
    print(f"{'out x in':>10}  {'dense':>7}  " + "  ".join(f"{n:>12}" for n, _, _ in paths) + f"  {'torch.ops':>9}  (µs)")
    with torch.inference_mode():
        for o, i in SHAPES:
            p, g, h = binary_layer(o, i)
            g, h = g.float(), h.float()
            x, w = make_x(1, i, torch.float32), torch.randn(o, i)
            row = [per_call_us(lambda: torch.nn.functional.linear(x, w), a.calls)]
            for _, isa, algo in paths:
                row.append(per_call_us(lambda: mod.binary_linear(x, p, g, h, i, isa, 1 << 40, _ALGO[algo]), a.calls))
            row.append(per_call_us(lambda: torch.ops.onebit.binary_linear(x, p, g, h, i), a.calls))
            print(f"{f'{o}x{i}':>10}  {row[0]:7.1f}  " + "  ".join(f"{v:12.1f}" for v in row[1:-1])
                  + f"  {row[-1]:9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
