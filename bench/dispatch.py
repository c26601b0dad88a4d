"""Per-call overhead of the packed ops: a tiny ``binary_linear`` (16 x 64, so the kernel itself is
~nothing) called through the C++ function directly, through ``kernels.dispatch`` (the Python
kernel the op registers), and through ``torch.ops.onebit.binary_linear`` under
``torch.inference_mode`` (onebit's decode loop), ``torch.no_grad`` and grad mode.  Medians of
``--rounds`` rounds of ``--calls`` calls, in µs per call; the difference to the direct call is what
dispatch adds.

    python bench/dispatch.py
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def per_call_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import onebit.kernels  # noqa: F401  (defines and registers the ops)
    from onebit.kernels import dispatch
    from onebit.kernels.cpu import loader

    mod = loader.load()
    if mod is None:
        print(f"the C++ kernels did not build: {loader.build_error()}")
        return 1
    print(machine())
    n, k = 16, 64
    packed = torch.randint(0, 256, (n, k // 8), dtype=torch.uint8)
    g, h, x = torch.randn(k), torch.randn(n), torch.randn(1, k)
    isa, thr, algo = dispatch.cpu_params()
    op = torch.ops.onebit.binary_linear.default
    cases = {
        "C++ function, direct": (lambda: mod.binary_linear(x, packed, g, h, k, isa, thr, algo), torch.inference_mode),
        "kernels.dispatch (Python kernel)": (lambda: dispatch.binary_linear_cpu(x, packed, g, h, k), torch.inference_mode),
        "torch.ops, inference_mode": (lambda: op(x, packed, g, h, k), torch.inference_mode),
        "torch.ops, no_grad": (lambda: op(x, packed, g, h, k), torch.no_grad),
        "torch.ops, grad mode": (lambda: op(x, packed, g, h, k), torch.enable_grad),
    }
    res: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (fn, mode) in cases.items():
            with mode():
                res[name].append(per_call_us(fn, args.calls))
    base = statistics.median(res["C++ function, direct"])
    print(f"binary_linear {n}x{k}, 1 thread, medians of {args.rounds} rounds x {args.calls} calls")
    print(f"{'path':36s} {'µs/call':>8s} {'over direct':>12s}")
    for name, v in res.items():
        m = statistics.median(v)
        print(f"{name:36s} {m:8.2f} {m - base:+11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
