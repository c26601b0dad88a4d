"""The attention of one decode step: ``torch.ops.onebit.decode_attention`` (the C++ kernel the CPU
dispatcher picks) against its pure-torch reference (two ``bmm`` + fp32 softmax, what the op does
without the kernel) and against ``F.scaled_dot_product_attention`` on the same cache in
``[kv_heads, positions, head_dim]`` order (what onebit's decode loop called before), measured in the
same rounds; ratio = other / kernel.

Shape: TinyLlama-1.1B (32 heads, 4 KV heads, head_dim 64), fp32, a static cache of ``--max-len``
positions of which the first ``--positions`` are filled.  Warm: one layer's cache, called again and
again (it stays in cache); cold: 22 layers' caches cycled (``--layers``; 24 MiB at 512 positions,
which may still sit in a large L3); dram: a buffer of twice the last-level cache read (untimed),
then the 22 layers' caches once each, ``--dram-repeats`` times: the caches come from memory as in a
decode step, where the weights streaming through evict them, while the code and q stay warm.

    python bench/decode_attention.py                     # 1 thread, 40 and 512 positions
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llc_bytes, machine, timeit  # noqa: E402

import onebit.kernels  # noqa: E402,F401
from onebit.kernels import dispatch  # noqa: E402
from onebit.kernels.reference import decode_attention_ref  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, nargs="+", default=[40, 512])
    ap.add_argument("--max-len", type=int, default=545,
                    help="cache row length (545: bench/gguf_speed.py's 512 + 32 + 1; LlamaRuntime pads rows "
                         "that are a multiple of 1 KiB)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=22, help="caches cycled for the cold column")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--dram-repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"backend: {dispatch.backend('cpu')}; {args.heads} heads, {args.kv_heads} KV heads, head_dim "
          f"{args.head_dim}, fp32, {args.threads} thread(s); medians of {args.rounds} rounds")
    nh, nkv, d, ml = args.heads, args.kv_heads, args.head_dim, args.max_len
    gen = torch.Generator().manual_seed(0)
    kts = [torch.randn(nkv, d, ml, generator=gen) for _ in range(args.layers)]
    vs = [torch.randn(nkv, ml, d, generator=gen) for _ in range(args.layers)]
    ks = [kt.transpose(1, 2).contiguous() for kt in kts]   # the same keys in SDPA's order
    q = torch.randn(nh, d, generator=gen)
    scale = d ** -0.5
    flush = torch.ones(2 * llc_bytes() // 4)

    def timeit_dram(fn, repeats):
        """Median seconds of single calls: ``repeats`` times, ``flush`` read (untimed), then one
        call on each layer's cache in turn (as a decode step reaches them: their caches from
        memory, the code and q warm)."""
        ts = []
        for _ in range(repeats):
            flush.sum()
            for _ in range(args.layers):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    print(f"{'positions':>9} {'cache':>5} {'kernel us':>10} {'ref us':>8} {'sdpa us':>8} {'ref/kernel':>10} "
          f"{'sdpa/kernel':>11}")
    with torch.inference_mode():
        for n in args.positions:
            ref = decode_attention_ref(q, kts[0][:, :, :n], vs[0][:, :n], scale)
            err = (torch.ops.onebit.decode_attention(q, kts[0][:, :, :n], vs[0][:, :n], scale) - ref).norm() / ref.norm()
            for cache in ("warm", "cold", "dram"):
                count = 1 if cache == "warm" else args.layers
                it = [0]

                def pick():
                    it[0] = (it[0] + 1) % count
                    return it[0]

                fns = {
                    "kernel": lambda: (lambda i: torch.ops.onebit.decode_attention(
                        q, kts[i][:, :, :n], vs[i][:, :n], scale))(pick()),
                    "ref": lambda: (lambda i: decode_attention_ref(q, kts[i][:, :, :n], vs[i][:, :n], scale))(pick()),
                    "sdpa": lambda: (lambda i: F.scaled_dot_product_attention(
                        q.view(1, nh, 1, d), ks[i][None, :, :n], vs[i][None, :, :n], scale=scale,
                        enable_gqa=nh != nkv))(pick()),
                }
                runs = [{k: timeit_dram(f, args.dram_repeats) if cache == "dram" else timeit(f, args.repeats)
                         for k, f in fns.items()} for _ in range(args.rounds)]
                med = {k: statistics.median(r[k] for r in runs) for k in fns}
                ratio = {k: statistics.median(r[k] / r["kernel"] for r in runs) for k in fns}
                print(f"{n:>9} {cache:>5} {med['kernel'] * 1e6:10.1f} {med['ref'] * 1e6:8.1f} "
                      f"{med['sdpa'] * 1e6:8.1f} {ratio['ref']:9.2f}x {ratio['sdpa']:10.2f}x")
            print(f"{'':>9} relative error of the kernel against the reference: {err:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
