"""KV-cache quantization: memory by formula and by measured tensor bytes, and the perplexity cost
(docs/evaluation.md, "KV-cache quantization").

    python bench/kv_cache.py memory                     # SmolLM2-135M shapes at 2k / 8k tokens
    python bench/kv_cache.py ppl MODEL [--data tinystories] [--max-windows 40] [--chunk 16]   # MODEL: a directory or a .gguf file

memory: a QuantizedKVCache filled with T positions of fp16 keys and values in SmolLM2-135M's shapes
(30 layers, 3 KV heads x 64 dims, batch 1; random values: the byte count does not depend on them),
``storage_bytes()`` (every tensor it holds) next to ``onebit.kvcache.kv_cache_bits``.
ppl: the model's perplexity with one forward per window, then each window fed ``--chunk`` tokens at a
time through a float cache and through each quantized cache (``onebit eval ppl --kv-cache K --kv-axis
A --kv-group G --kv-chunk C`` gives each row alone).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from onebit.kvcache import KVQuantConfig, QuantizedKVCache, kv_cache_bits

SMOLLM2 = dict(layers=30, kv_heads=3, head_dim=64)
CONFIGS = [("int8", "token", 32), ("int8", "kivi", 32), ("int4", "token", 32), ("int4", "kivi", 32),
           ("int4", "token", 64), ("int4", "channel", 32)]


def memory() -> list[dict]:
    rows = []
    L, H, D = SMOLLM2["layers"], SMOLLM2["kv_heads"], SMOLLM2["head_dim"]
    for T in (2048, 8192):
        from transformers import DynamicCache

        fp = kv_cache_bits(L, H, D, T) / 8
        dyn = DynamicCache()
        for li in range(L):
            k = torch.randn(1, H, T, D, dtype=torch.float16)
            dyn.update(k, k.clone(), li)
        got = sum(t.numel() * t.element_size() for lay in dyn.layers for t in (lay.keys, lay.values))
        rows.append(dict(tokens=T, cache="fp16 (DynamicCache)", formula_mib=fp / 2 ** 20,
                         measured_mib=got / 2 ** 20, ratio=got / fp))
        del dyn
        for kind, axis, group in CONFIGS:
            cfg = KVQuantConfig(kind, axis, group)
            cache = QuantizedKVCache(cfg)
            for li in range(L):
                for start in range(0, T, 1024):      # written as a prefill in pieces of 1024
                    n = min(1024, T - start)
                    k = torch.randn(1, H, n, D, dtype=torch.float16)
                    cache.update(k, k.clone(), li)
            got = cache.storage_bytes()
            want = kv_cache_bits(L, H, D, T, cfg.bits, group, axis) / 8
            rows.append(dict(tokens=T, cache=f"{kind} {axis} g{group}", formula_mib=want / 2 ** 20,
                             measured_mib=got / 2 ** 20, ratio=got / fp))
            del cache
    return rows


def ppl(model_path: str, data: str, max_windows: int, chunk: int, seqlen: int | None,
        configs=CONFIGS) -> list[dict]:
    from onebit.eval.data import load_text
    from onebit.eval.perplexity import perplexity, tokenize_text
    from onebit.models import context_length, load_model, load_tokenizer

    spec = model_path
    model, tok = load_model(model_path), load_tokenizer(model_path)
    seqlen = seqlen or context_length(model)
    ids = tokenize_text(tok, load_text(data))
    rows = []

    def run(label, kv, c):
        t0 = time.perf_counter()
        r = perplexity(model, ids, seqlen, max_windows, progress=False, kv_cache=kv, kv_chunk=c)
        rows.append(dict(model=spec, data=data, cache=label, chunk=c, seqlen=seqlen, windows=r.windows,
                         ppl=r.ppl, seconds=time.perf_counter() - t0))
        print(json.dumps(rows[-1]), flush=True)

    run("none (one forward)", None, None)
    run("fp (chunked)", None, chunk)
    for kind, axis, group in configs:
        run(f"{kind} {axis} g{group}", KVQuantConfig(kind, axis, group), chunk)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["memory", "ppl"])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--data", default="tinystories")
    ap.add_argument("--max-windows", type=int, default=40)
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default=None, help="kind:axis:group,... (default: all six)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.what == "memory":
        for r in memory():
            print(f"{r['tokens']:>5} {r['cache']:<20} formula {r['formula_mib']:8.3f} MiB  "
                  f"measured {r['measured_mib']:8.3f} MiB  {r['ratio']:.4f} x fp16")
        return 0
    if not a.model:
        ap.error("ppl needs MODEL")
    configs = CONFIGS if not a.configs else [(k, x, int(g)) for k, x, g in
                                             (c.split(":") for c in a.configs.split(","))]
    ppl(a.model, a.data, a.max_windows, a.chunk, a.seqlen, configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
