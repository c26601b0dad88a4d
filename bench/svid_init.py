"""SVID init time per layer: power-iteration SVD vs NMF (multiplicative updates).

Baseline in the same run: torch.linalg.svd (full SVD, what a naive rank-1 would do).
Also prints the relative reconstruction error ‖W − sign(W)⊙abᵀ‖/‖W‖ of each.

    python bench/svid_init.py                  # Llama-2-7B FFN shape 4096×11008, 3 repeats
    python bench/svid_init.py --shape 4096 4096
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from onebit.formats.packing import sign
from onebit.methods.svid import reconstruct, svid

from common import machine  # bench/common.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=2, default=[4096, 11008], metavar=("OUT", "IN"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-full-svd", action="store_true", help="skip the torch.linalg.svd baseline")
    args = ap.parse_args()
    torch.manual_seed(0)
    w = torch.randn(*args.shape) * 0.02
    print(machine())
    print(f"layer {args.shape[0]}x{args.shape[1]}, fp32, median of {args.repeats}")

    def timed(fn):
        ts, res = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts), res

    rows = []
    if not args.no_full_svd:
        def full():
            u, s, vh = torch.linalg.svd(w.abs(), full_matrices=False)
            return u[:, 0] * s[0], vh[0]
        rows.append(("torch.linalg.svd (baseline)", *timed(full)))
    rows.append(("svid svd (power iteration)", *timed(lambda: svid(w, "svd"))))
    rows.append(("svid nmf (multiplicative)", *timed(lambda: svid(w, "nmf"))))
    base = rows[0][1]
    s = sign(w)
    for name, t, (a, b) in rows:
        a, b = a.abs(), b.abs()  # the full SVD's singular vectors may come out negated
        err = ((w - reconstruct(s, a, b)).norm() / w.norm()).item()
        print(f"{name:30s} {t:8.3f} s   {base / t:7.1f}x vs baseline   rel. error {err:.5f}")


if __name__ == "__main__":
    main()
