"""The block-scaled packed formats on CPU: C++ kernel vs the pure-torch reference vs dense fp32.

For every (shape, format, batch): ms of ``torch.ops.onebit.quant_linear`` /
``block_sign_linear`` with the reference forced (``ONEBIT_KERNEL=reference``: rows dequantized
2048 at a time + ``F.linear``), with the C++ kernels (the dispatcher's choice: GEMV below
``ONEBIT_CPU_QMM_THRESHOLD`` batch rows, dequantized blocks + BLAS from there), and of
``F.linear`` with a dense fp32 weight of the same shape; the ratios ref/C++ and dense/C++ are
medians of per-round ratios measured in the same run; GB/s = packed bytes (codes + scales +
zeros) / C++ time.  Weights are cold (copies > 2x LLC, cycled) unless ``--warm``.

    python bench/quant_kernels.py --threads 1                      # the full table (minutes)
    python bench/quant_kernels.py --quick                          # ~30 s: SmolLM2 shapes, batch 1, warm weights
    python bench/quant_kernels.py --crossover --threads 1          # GEMV vs GEMM path by batch: the threshold
    ONEBIT_CPU_ISA=avx2 python bench/quant_kernels.py --quick      # another ISA path
    python bench/quant_kernels.py --threads 1 --batch 1 --models TinyLlama --formats "int4 g32 sym" "int8 g32 sym" --i8

``--i8``: one more column, the same calls with ``ONEBIT_CPU_ALGO=i8`` (int8 activations; with
AVX512-VNNI the symmetric 4/8-bit formats then take quant_cpu_vnni.cpp's GEMV), and its ratio to
the default C++ time measured in the same round.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, llc_bytes, machine, timeit  # noqa: E402

import onebit.kernels  # noqa: E402,F401
from onebit.formats.packing import pack, pack_signs  # noqa: E402

#: (model, out, in) in out x in order: up/gate, down, LM head
SHAPES = [("SmolLM2", 1536, 576), ("SmolLM2", 576, 1536), ("SmolLM2", 49152, 576),
          ("TinyLlama", 5632, 2048), ("TinyLlama", 2048, 5632), ("TinyLlama", 32000, 2048)]
#: name -> (bits, group (0: per channel), symmetric); bits 1 = q1_0 (block_sign_linear)
FORMATS = {"q1_0 g128": (1, 128, True), "int4 g32 sym": (4, 32, True), "int8 g32 sym": (8, 32, True),
           "int8 per-channel": (8, 0, True),
           "int8 g128": (8, 128, True), "int2 g64": (2, 64, True), "int4 g128 asym": (4, 128, False)}
from kernel_speed import env  # noqa: E402  (bench/kernel_speed.py: set dispatcher variables, restore after)

DEFAULT_FORMATS = ["q1_0 g128", "int4 g32 sym", "int8 per-channel", "int8 g128", "int2 g64"]




def make_layer(out_f: int, in_f: int, bits: int, group: int, sym: bool, gen: torch.Generator):
    """(packed, scale, zero) with random codes, as the packed modules store them."""
    if bits == 1:
        w = torch.randn(out_f, in_f, generator=gen)
        return pack_signs(w), (torch.rand(out_f, -(-in_f // group), generator=gen) * 0.02).half(), None
    ng = -(-in_f // group) if group else 1
    q = torch.randint(0, 2 ** bits, (out_f, in_f), generator=gen, dtype=torch.uint8)
    scale = (torch.rand(out_f, ng, generator=gen) * 0.02).half()
    zero = None if sym else torch.randint(0, 2 ** bits, (out_f, ng), generator=gen, dtype=torch.uint8)
    return pack(q, bits), scale, zero


def packed_bytes(layer) -> int:
    return sum(t.numel() * t.element_size() for t in layer if t is not None)


def call(layer, x, bits, group, in_f):
    p, s, z = layer
    if bits == 1:
        return torch.ops.onebit.block_sign_linear(x, p, s, group, in_f)
    return torch.ops.onebit.quant_linear(x, p, s, z, bits, group, in_f)


def copies(nbytes: int, cold: bool) -> int:
    return max(1, math.ceil(2 * llc_bytes() / nbytes)) if cold else 1


def bench_case(out_f, in_f, fmt, batches, dtype, repeats, cold, with_dense, i8=False):
    bits, group, sym = FORMATS[fmt]
    gen = torch.Generator().manual_seed(0)
    layer = make_layer(out_f, in_f, bits, group, sym, gen)
    nb = packed_bytes(layer)
    layers = [layer] + [tuple(None if t is None else t.clone() for t in layer) for _ in range(copies(nb, cold) - 1)]
    dense = None
    if with_dense:
        w = torch.randn(out_f, in_f, generator=gen).to(dtype)
        dense = [w] + [w.clone() for _ in range(copies(w.numel() * w.element_size(), cold) - 1)]
    it = {"p": 0, "d": 0}
    res = {}
    for b in batches:
        x = torch.randn(b, in_f, generator=gen).to(dtype)

        def f_packed():
            it["p"] = (it["p"] + 1) % len(layers)
            return call(layers[it["p"]], x, bits, group, in_f)

        def f_dense():
            it["d"] = (it["d"] + 1) % len(dense)
            return F.linear(x, dense[it["d"]])

        reps = repeats if b * out_f * in_f < 2e9 else max(2, repeats // 4)
        r = {"cpp": timeit(f_packed, reps, min_time=0.05)}
        if i8:
            with env(ONEBIT_CPU_ALGO="i8"):
                r["i8"] = timeit(f_packed, reps, min_time=0.05)
        with env(ONEBIT_KERNEL="reference"):
            r["ref"] = timeit(f_packed, max(2, reps // 2), warmup=1)
        if dense is not None:
            r["dense"] = timeit(f_dense, reps, min_time=0.05)
        res[b] = r
    return res, nb


def crossover(args, dtype) -> None:
    """GEMV (threshold never) vs GEMM path (threshold 1) by batch size, per format."""
    print(f"\nGEMV vs GEMM path (ms, {dtype}); the faster path from the batch where GEMM wins:")
    batches = [2, 4, 8, 16, 24, 32, 48, 64, 128]
    print(f"{'shape':>14} {'format':>17} " + " ".join(f"{b:>12}" for b in batches))
    for _, o, i in [s for s in SHAPES if s[0] == "SmolLM2"][:2] + [("TinyLlama", 5632, 2048)]:
        for fmt in args.formats:
            bits, group, sym = FORMATS[fmt]
            layer = make_layer(o, i, bits, group, sym, torch.Generator().manual_seed(0))
            cells = []
            for b in batches:
                x = torch.randn(b, i).to(dtype)
                t = {}
                for name, thr in (("gemv", str(1 << 40)), ("gemm", "1")):
                    with env(ONEBIT_CPU_QMM_THRESHOLD=thr):
                        t[name] = statistics.median(timeit(lambda: call(layer, x, bits, group, i), 3)
                                                    for _ in range(args.rounds))
                cells.append(f"{t['gemv'] * 1e3:5.2f}/{t['gemm'] * 1e3:5.2f}")
            print(f"{o:>6}x{i:<7} {fmt:>17} " + " ".join(f"{c:>12}" for c in cells))
    print("(cells: GEMV ms / GEMM ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 512])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--formats", nargs="+", default=None, choices=list(FORMATS), metavar="FORMAT",
                    help=f"default: {', '.join(DEFAULT_FORMATS)}; also: int4 g128 asym")
    ap.add_argument("--models", nargs="+", default=["SmolLM2", "TinyLlama"])
    ap.add_argument("--rounds", type=int, default=3, help="measure the whole table this many times")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--warm", action="store_true", help="one weight copy (may sit in cache)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense fp32 F.linear column")
    ap.add_argument("--quick", action="store_true",
                    help="~30 s: SmolLM2 shapes, batch 1, one round, few repeats, warm weights")
    ap.add_argument("--crossover", action="store_true", help="only the GEMV vs GEMM table")
    ap.add_argument("--i8", action="store_true", help="also the C++ time with ONEBIT_CPU_ALGO=i8 (int8 activations)")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batch, args.rounds, args.repeats, args.warm = ["SmolLM2"], [1], 1, 5, True
    args.formats = [f.replace("_", " ") if f not in FORMATS else f for f in (args.formats or DEFAULT_FORMATS)]
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    call(make_layer(8, 32, 4, 32, True, torch.Generator()), torch.randn(1, 32), 4, 32, 32)  # build first
    print(machine("cpu"))
    print(f"ONEBIT_CPU_ISA={os.environ.get('ONEBIT_CPU_ISA', 'auto')}, GEMM path from batch "
          f"{onebit.kernels.dispatch.quant_mm_threshold()} (ONEBIT_CPU_QMM_THRESHOLD), x {args.dtype}")
    if args.crossover:
        crossover(args, dtype)
        return
    cbw = statistics.median(copy_bandwidth(nbytes=128 << 20) for _ in range(3))
    print(f"copy bandwidth (dst.copy_(src), 128 MiB, read+write): {cbw:.1f} GB/s")
    print(f"weights: {'warm (one copy)' if args.warm else 'cold (copies > 2x LLC, cycled)'}; "
          f"median of {args.rounds} round(s) x {args.repeats}+ calls\n")
    shapes = [s for s in SHAPES if s[0] in args.models]
    runs: dict = {}
    nbytes: dict = {}
    for r in range(args.rounds):
        for model, o, i in shapes:
            for fmt in args.formats:
                res, nb = bench_case(o, i, fmt, args.batch, dtype, args.repeats, not args.warm, not args.no_dense,
                                     args.i8)
                nbytes[(o, i, fmt)] = nb
                for b, v in res.items():
                    runs.setdefault((model, o, i, fmt, b), []).append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"{'model':>9} {'out x in':>12} {'format':>17} {'batch':>5} {'ref ms':>9} {'C++ ms':>9} "
          f"{'dense ms':>9} {'ref/C++':>8} {'dense/C++':>9} {'GB/s':>6} {'%copy':>6}" +
          (f" {'i8 ms':>9} {'C++/i8':>7} {'i8 GB/s':>7}" if args.i8 else ""))
    for (model, o, i, fmt, b), rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        ratio = {k: statistics.median(r[k] / r["cpp"] for r in rs) for k in rs[0]}
        gbs = nbytes[(o, i, fmt)] / med["cpp"] / 1e9
        dense = f"{med['dense'] * 1e3:9.3f}" if "dense" in med else f"{'-':>9}"
        dr = f"{ratio['dense']:8.2f}x" if "dense" in med else f"{'-':>9}"
        print(f"{model:>9} {o:>6}x{i:<5} {fmt:>17} {b:>5} {med['ref'] * 1e3:9.3f} {med['cpp'] * 1e3:9.3f} "
              f"{dense} {ratio['ref']:7.1f}x {dr} {gbs:6.1f} {100 * gbs / cbw:5.0f}%" +
              (f" {med['i8'] * 1e3:9.3f} {1 / ratio['i8']:6.2f}x {nbytes[(o, i, fmt)] / med['i8'] / 1e9:7.1f}"
               if "i8" in med else ""))
    try:
        print("load average at end: " + " ".join(open("/proc/loadavg").read().split()[:3]))
    except OSError:
        pass


if __name__ == "__main__":
    main()
