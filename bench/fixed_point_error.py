"""How exact the fixed-point GEMVs are: relative error of each CPU path against the fp64 truth.

The packed binary linear ``y = ((x ⊙ g) · sign(W)ᵀ) ⊙ h`` on a 256×2048 layer, with x rounded as
the reference rounds ``x*g`` (fp32) and the truth computed in fp64 from that x.  Rows: Gaussian, and
Gaussian with one large outlier column (3e3, 1e5), where the fixed-point kernels' step
(``max|x| / 2^23``) is largest relative to the other columns.  Paths: the pure-torch reference
(``F.linear``-style fp32 matmul), the fp32 kernels ``shift`` and ``psum``, and the fixed-point
``fx`` / ``fxlut`` (where the CPU runs them; elsewhere they fall back to an fp32 kernel).

    python bench/fixed_point_error.py
"""
from __future__ import annotations

import argparse

import torch

from onebit.formats.packing import pack_signs, unpack_signs
from onebit.kernels.cpu import loader
from onebit.kernels.reference import binary_linear_ref

ALGOS = {"shift": 4, "psum": 3, "fx": 10, "fxlut": 11}
NEVER = 1 << 40


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return ((y - ref).norm() / ref.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-features", type=int, default=256)
    ap.add_argument("--in-features", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    mod = loader.load()
    if mod is None:
        raise SystemExit(f"the C++ CPU kernels did not build: {loader.build_error()}")
    gen = torch.Generator().manual_seed(args.seed)
    n, k = args.out_features, args.in_features
    packed = pack_signs(torch.randn(n, k, generator=gen))
    g = (torch.rand(k, generator=gen) + 0.5).half()
    h = (torch.rand(n, generator=gen) + 0.5).half()
    signs = unpack_signs(packed, k).double()
    print(f"layer {n}x{k}, {args.rows} rows; CPU flags probed: {mod.cpu_flags()}")
    print(f"{'rows':>18} {'reference':>10} " + " ".join(f"{a:>10}" for a in ALGOS))
    for name, outlier in (("gaussian", None), ("outlier 3e3", 3e3), ("outlier 1e5", 1e5)):
        x = torch.randn(args.rows, k, generator=gen)
        if outlier is not None:
            x[:, 5] = outlier
        truth = ((x * g.float()).double() @ signs.t()) * h.double()
        errs = [rel_err(binary_linear_ref(x, packed, g, h, k), truth)]
        errs += [rel_err(mod.binary_linear(x, packed, g, h, k, -1, NEVER, a), truth) for a in ALGOS.values()]
        print(f"{name:>18} " + " ".join(f"{e:>10.2e}" for e in errs))


if __name__ == "__main__":
    main()
