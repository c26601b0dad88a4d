"""Packed OneBit linear vs dense ``torch.nn.functional.linear``, Llama-2-7B layer shapes.

For every (shape, batch, dtype): time of ``torch.ops.onebit.binary_linear`` (whatever backend the
dispatcher picks: the C++ kernels on CPU, Triton on CUDA) and of ``F.linear`` with the dense weight
of the same shape and dtype, measured in the same run, ratio = dense / packed.  The whole table is
measured ``--rounds`` times (the CPU may be shared) and the median of each number is printed.

Bandwidth: bytes a call must move (weights + x + y, + g/h for packed) / time, against the
machine's copy bandwidth measured in the same run.  By default the weights are cold: the
benchmark cycles through enough copies of each weight to exceed the last-level cache, as in
decode where every layer's weights come from DRAM once per token (``--warm``: one copy, which for
packed weights fits in cache).

    python bench/kernel_speed.py                              # CPU: fp32 + bf16, batch 1 8 64 512
    python bench/kernel_speed.py --batch 1 --dtypes float32 --variants   # + the other CPU paths and the reference
    python bench/kernel_speed.py --isa avx2 --preset tinyllama --variants  # an AVX2-only CPU (issue 19)
    python bench/kernel_speed.py --device cuda                # GPU: fp16

``--isa avx2`` caps onebit's kernels at AVX2 (``ONEBIT_CPU_ISA``) and, unless ``--dense-isa
native``, re-runs the script with MKL and oneDNN capped at AVX2 too (``MKL_ENABLE_INSTRUCTIONS``,
``ONEDNN_MAX_CPU_ISA``), so that the dense ``F.linear`` it is compared with is an AVX2 GEMM as on
that CPU.  ``--algo`` sets ``ONEBIT_CPU_ALGO`` for the main column (e.g. ``i8``).
"""
from __future__ import annotations

import argparse
import contextlib
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
from onebit.formats.packing import pack_signs  # noqa: E402

PRESETS = {  # (out, in): attn/o, (k/v), gate/up, down
    "llama7b": [(4096, 4096), (11008, 4096), (4096, 11008)],
    "tinyllama": [(2048, 2048), (256, 2048), (5632, 2048), (2048, 5632)],
}
NEVER = str(1 << 40)
VARIANTS = {  # name -> environment for the dispatcher (CPU), on top of --isa / --algo
    "avx2": {"ONEBIT_CPU_ISA": "avx2"},
    "i8": {"ONEBIT_CPU_ALGO": "i8"},
    "avx2-table": {"ONEBIT_CPU_ISA": "avx2", "ONEBIT_CPU_ALGO": "table", "ONEBIT_CPU_MM_THRESHOLD": NEVER},
    "avx2-xor": {"ONEBIT_CPU_ISA": "avx2", "ONEBIT_CPU_ALGO": "xor", "ONEBIT_CPU_MM_THRESHOLD": NEVER},
    "avx2-blend": {"ONEBIT_CPU_ISA": "avx2", "ONEBIT_CPU_ALGO": "blend", "ONEBIT_CPU_MM_THRESHOLD": NEVER},
    "avx2-i8": {"ONEBIT_CPU_ISA": "avx2", "ONEBIT_CPU_ALGO": "i8", "ONEBIT_CPU_MM_THRESHOLD": NEVER},
    "avx2-gemm": {"ONEBIT_CPU_ISA": "avx2", "ONEBIT_CPU_MM_THRESHOLD": "1"},
    "avx2-fxlut": {"ONEBIT_CPU_ISA": "avx2", "ONEBIT_CPU_ALGO": "fxlut"},
    "gemm": {"ONEBIT_CPU_MM_THRESHOLD": "1"},
    "scalar": {"ONEBIT_CPU_ISA": "scalar"},
    "lut": {"ONEBIT_CPU_ALGO": "lut"},
    "kmask": {"ONEBIT_CPU_ALGO": "kmask"},
    "psum": {"ONEBIT_CPU_ALGO": "psum"},
    "shift": {"ONEBIT_CPU_ALGO": "shift"},
    "fx": {"ONEBIT_CPU_ALGO": "fx"},
    "fxlut": {"ONEBIT_CPU_ALGO": "fxlut"},
    "bf16dp": {"ONEBIT_CPU_ALGO": "bf16dp"},
    "reference": {"ONEBIT_KERNEL": "reference"},
}


@contextlib.contextmanager
def env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


LLC = {"bytes": 0}  # --llc-mib, else the size the OS reports


def copies_for(nbytes: int, cold: bool) -> int:
    return max(1, math.ceil(2 * (LLC["bytes"] or llc_bytes()) / nbytes)) if cold else 1


def bench_case(out_f, in_f, batch, dtype, device, repeats, cold, variants):
    es = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(out_f, in_f, generator=gen)
    nd = copies_for(w.numel() * es, cold)
    dense = [w.to(device=device, dtype=dtype) for _ in range(nd)]
    packed = pack_signs(w).to(device)
    npk = copies_for(packed.numel(), cold)
    packs = [packed.clone() for _ in range(npk)]
    g = torch.rand(in_f, generator=gen).half().to(device)
    h = torch.rand(out_f, generator=gen).half().to(device)
    x = torch.randn(batch, in_f, generator=gen).to(device=device, dtype=dtype)
    del w
    it = {"d": 0, "p": 0}

    def f_dense():
        it["d"] = (it["d"] + 1) % nd
        return F.linear(x, dense[it["d"]])

    def f_packed():
        it["p"] = (it["p"] + 1) % npk
        return torch.ops.onebit.binary_linear(x, packs[it["p"]], g, h, in_f)

    def first_calls():  # one untimed 1-row call per copy: a path that caches a layout of the weight
        for p in packs:  # (the AVX2 int8 path's transposed copy) builds it, as decode's first token does
            torch.ops.onebit.binary_linear(x[:1], p, g, h, in_f)

    io = (batch * in_f + batch * out_f) * es
    first_calls()
    res = {"dense": timeit(f_dense, repeats, device, min_time=0.2),
           "packed": timeit(f_packed, repeats, device, min_time=0.2),
           "bytes_dense": out_f * in_f * es + io,
           "bytes_packed": packed.numel() + 2 * (in_f + out_f) + io}
    for name in variants:
        with env(**VARIANTS[name]):
            first_calls()
            res[name] = timeit(f_packed, max(3, repeats // 3), device)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 512])
    ap.add_argument("--dtypes", nargs="+", default=None,
                    help="default: float32 bfloat16 on CPU, float16 on CUDA")
    ap.add_argument("--shapes", nargs="+", default=None, metavar="OUTxIN",
                    help="default: the --preset's shapes")
    ap.add_argument("--preset", default="llama7b", choices=sorted(PRESETS),
                    help="layer shapes: llama7b (Llama-2-7B) or tinyllama (TinyLlama-1.1B)")
    ap.add_argument("--isa", default=None, choices=["auto", "avx512", "avx2", "scalar"],
                    help="ONEBIT_CPU_ISA for the packed kernels (avx2: an AVX2-only CPU)")
    ap.add_argument("--dense-isa", default="same", choices=["same", "native"],
                    help="with --isa avx2: cap MKL/oneDNN at AVX2 too (same, default) or not (native)")
    ap.add_argument("--algo", default=None, help="ONEBIT_CPU_ALGO for the packed column (e.g. i8)")
    ap.add_argument("--rounds", type=int, default=3, help="measure the whole table this many times")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--warm", action="store_true", help="one weight copy (packed may sit in cache)")
    ap.add_argument("--llc-mib", type=int, default=0,
                    help="last-level cache size for the cold copies (default: as reported; a VM may "
                         "report the host's, e.g. 480 MiB, which makes setup slow)")
    ap.add_argument("--quick", action="store_true",
                    help="one round, 3 calls, 64 MiB copy bandwidth, --llc-mib 64 unless given (~30 s)")
    ap.add_argument("--variants", action="store_true",
                    help="also time the other CPU paths (" + ", ".join(VARIANTS) + ")")
    ap.add_argument("--variant", nargs="+", default=None, choices=sorted(VARIANTS),
                    help="time only these other CPU paths")
    args = ap.parse_args()
    if args.isa == "avx2" and args.dense_isa == "same" and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        # MKL / oneDNN read these when they load (torch is imported already): run again with them
        os.environ.update(MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.isa:
        os.environ["ONEBIT_CPU_ISA"] = args.isa
    if args.algo:
        os.environ["ONEBIT_CPU_ALGO"] = args.algo
    if args.quick:
        args.rounds, args.repeats, args.llc_mib = 1, 3, args.llc_mib or 64
    LLC["bytes"] = args.llc_mib << 20
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/kernel_speed.py: error: --device cuda but CUDA is not available")
    dtypes = args.dtypes or (["float32", "bfloat16"] if args.device == "cpu" else ["float16"])
    shapes = ([tuple(int(v) for v in s.lower().split("x")) for s in args.shapes] if args.shapes
              else PRESETS[args.preset])
    variants = (args.variant or list(VARIANTS)) if (args.variants or args.variant) and args.device == "cpu" else []

    torch.ops.onebit.binary_linear(torch.randn(1, 8), torch.zeros(1, 1, dtype=torch.uint8),
                                   torch.ones(8), torch.ones(1), 8)  # build/load the backend first
    print(machine(args.device))
    if args.device == "cpu":
        dense_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
        print(f"ONEBIT_CPU_ISA={os.environ.get('ONEBIT_CPU_ISA', 'auto')} "
              f"ONEBIT_CPU_ALGO={os.environ.get('ONEBIT_CPU_ALGO', 'simd')} "
              f"ONEBIT_CPU_MM_THRESHOLD={os.environ.get('ONEBIT_CPU_MM_THRESHOLD', 'auto')}; "
              f"dense F.linear: MKL/oneDNN ISA {dense_isa}")
    cmib = 64 if args.quick else 512
    cbw = statistics.median(copy_bandwidth(args.device, cmib << 20) for _ in range(3))
    print(f"copy bandwidth (dst.copy_(src), {cmib} MiB, read+write): {cbw:.1f} GB/s")
    llc = (LLC["bytes"] or llc_bytes()) >> 20
    print(f"weights: {'warm (one copy)' if args.warm else f'cold (copies > 2x LLC = 2x {llc} MiB, cycled)'}; "
          f"median of {args.rounds} rounds x {args.repeats}+ calls\n")

    cases = [(s, b, d) for s in shapes for d in dtypes for b in args.batch]
    runs: dict = {c: [] for c in cases}
    for r in range(args.rounds):
        for (o, i), b, d in cases:
            runs[((o, i), b, d)].append(
                bench_case(o, i, b, getattr(torch, d), args.device, args.repeats, not args.warm, variants))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    hdr = (f"{'out x in':>12} {'batch':>5} {'dtype':>8} {'dense ms':>9} {'packed ms':>9} {'speedup':>8}"
           f" {'dense GB/s':>10} {'packed GB/s':>11} {'packed %copy':>12}")
    print(hdr)
    for c in cases:
        rs = runs[c]
        med = {k: statistics.median(r[k] for r in rs) for k in ("dense", "packed")}
        ratio = statistics.median(r["dense"] / r["packed"] for r in rs)
        bwd = rs[0]["bytes_dense"] / med["dense"] / 1e9
        bwp = rs[0]["bytes_packed"] / med["packed"] / 1e9
        (o, i), b, d = c
        print(f"{o:>6}x{i:<5} {b:>5} {d:>8} {med['dense'] * 1e3:>9.3f} {med['packed'] * 1e3:>9.3f}"
              f" {ratio:>7.1f}x {bwd:>10.1f} {bwp:>11.1f} {100 * bwp / cbw:>11.0f}%")
    if variants:
        print("\nother CPU paths (ms; speedup vs dense in the same round, median; packed GB/s as % of copy bw):")
        print(f"{'out x in':>12} {'batch':>5} {'dtype':>8} " + " ".join(f"{v:>21}" for v in variants))
        for c in cases:
            rs = runs[c]
            cells = []
            for v in variants:
                t = statistics.median(r[v] for r in rs)
                sp = statistics.median(r["dense"] / r[v] for r in rs)
                pct = 100 * rs[0]["bytes_packed"] / t / 1e9 / cbw
                cells.append(f"{t * 1e3:8.2f} ({sp:4.1f}x {pct:3.0f}%)")
            (o, i), b, d = c
            print(f"{o:>6}x{i:<5} {b:>5} {d:>8} " + " ".join(f"{s:>21}" for s in cells))


if __name__ == "__main__":
    main()
