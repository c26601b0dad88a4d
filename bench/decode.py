"""End-to-end greedy decode speed: fp model vs the same model quantized by onebit (packed kernels).

A Llama model with random weights in a real shape (default TinyLlama-1.1B: hidden 2048, FFN 5632,
22 layers, 32 heads / 4 KV heads, vocab 32000; ``--layers`` for fewer), in ``--dtype``.  The onebit
model is the same model (built again from the same seed, then quantized in place with
``onebit.quantize(model, OneBitConfig())``: no deep copy, so the process peaks near one fp model
plus the packed one) (SVID on random weights: fine for speed, meaningless for quality; ``lm_head``
stays dense as in every onebit checkpoint).  Both run the same prompt through the same loop
(``--loop static``: onebit.generate.StaticDecoder, static KV cache; ``hf``: transformers' forward
with its dynamic cache): one prefill, then ``--new-tokens`` single-token steps; tokens/s counts
the single-token steps only.  The two models alternate
for ``--rounds`` rounds and the median ratio is printed, with the resident bytes of each model's
weights (unique parameters + buffers) and the bytes a decode step must read.

    python bench/decode.py                       # TinyLlama shape, fp32, 32 new tokens, 3 rounds
    python bench/decode.py --layers 4 --rounds 1 # quick
    python bench/decode.py --dtype bfloat16
    python bench/decode.py --threads 1 --profile --rounds 1   # + the glue share of a onebit step

``--profile``: torch.profiler over ``--new-tokens`` steps of the onebit model, for both loops:
the share of the step's wall time outside the matmul ops (onebit::* packed ops, aten::mm / addmm
/ bmm), i.e. Python, transformers and the small ops between the matmuls ("glue").
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, machine, rss_bytes  # noqa: E402

import onebit  # noqa: E402


def tensor_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def step_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: everything except the input embedding table."""
    emb = model.get_input_embeddings().weight
    return tensor_bytes(model) - emb.numel() * emb.element_size()


def decode(model, prompt: torch.Tensor, new_tokens: int, loop: str = "static") -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for greedy decoding with the KV cache."""
    from gguf_speed import OneBitRuntime

    run = model.__dict__.setdefault("_bench_runtime", {}).setdefault(loop, OneBitRuntime(model=model, loop=loop))
    pre, tps = run.run(prompt[0].tolist(), new_tokens, torch.get_num_threads())
    return prompt.shape[1] / pre, tps


#: ops counted as the step's compute (the rest of the step is glue)
COMPUTE_OPS = ("onebit::", "aten::mm", "aten::addmm", "aten::bmm")


def compute_seconds(prof) -> float:
    """CPU seconds in COMPUTE_OPS (outermost occurrences only, so nothing counts twice)."""
    total = 0.0
    todo = [e for e in prof.events() if e.cpu_parent is None]
    while todo:
        e = todo.pop()
        if e.name.startswith(COMPUTE_OPS):
            total += e.cpu_time_total
        else:
            todo.extend(e.cpu_children)
    return total / 1e6


@torch.inference_mode()
def glue_share(model, prompt: torch.Tensor, steps: int, loop: str) -> tuple[float, float, float, float]:
    """(ms per step unprofiled, ms per step profiled, glue share of the profiled step, glue share
    of the unprofiled one).  Glue = 1 - compute / step time, compute being the matmul ops' time
    under the profiler; the first share counts the profiler's own per-op overhead as glue (an
    upper bound), the second compares with steps run without it (noisy on a shared CPU).  ``loop``: 'hf' (transformers'
    forward, dynamic cache), 'static-hf' (StaticDecoder, engine hf), 'static' (engine onebit when
    the model is a Llama)."""
    from torch.profiler import ProfilerActivity, profile

    from onebit.calibration import cache_kw
    from onebit.generate import StaticDecoder

    if loop.startswith("static"):
        dec = StaticDecoder(model, prompt.shape[1] + 8 * steps + 2, engine="hf" if loop == "static-hf" else "auto")
        tok = dec.prefill(prompt).argmax(-1, keepdim=True)

        def step():
            nonlocal tok
            tok = dec.step(tok).argmax(-1, keepdim=True)
    else:
        kw = cache_kw(model)
        out = model(prompt, use_cache=True)
        state = [getattr(out, kw if kw == "cache" else "past_key_values"), out.logits[:, -1].argmax(-1, keepdim=True)]

        def step():
            o = model(state[1], use_cache=True, **{kw: state[0]})
            state[:] = [getattr(o, kw if kw == "cache" else "past_key_values"), o.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(steps):   # warm
        step()
    plains, walls, comps = [], [], []
    for _ in range(3):       # alternate plain and profiled blocks; medians (the CPU may be shared)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        plains.append((time.perf_counter() - t) / steps)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            for _ in range(steps):
                step()
            walls.append((time.perf_counter() - t) / steps)
        comps.append(compute_seconds(prof) / steps)
    plain, wall, comp = (statistics.median(v) for v in (plains, walls, comps))
    return plain * 1e3, wall * 1e3, 1 - comp / wall, 1 - comp / plain


@torch.inference_mode()
def glue_only(model, prompt: torch.Tensor, steps: int, loop: str) -> float:
    """ms per decode step with every packed linear and the head stubbed out (they return zeros of
    the right shape): what is left is the glue alone — a measure that does not depend on the
    profiler, and less on the load than a share does.  The packed ops' own dispatch (~10 us per
    call) is stubbed too."""
    from onebit.nn import OneBitLinear

    head = model.get_output_embeddings()
    stubbed = [m for m in model.modules() if isinstance(m, OneBitLinear)] + [head]
    for m in stubbed:
        n = m.out_features
        m.forward = lambda x, n=n: x.new_zeros(*x.shape[:-1], n)
    try:
        from gguf_speed import OneBitRuntime

        rt = OneBitRuntime(model=model, loop=loop.replace("static-hf", "static"))
        if loop == "static-hf":
            from onebit.generate import StaticDecoder

            rt.decoder = StaticDecoder(model, prompt.shape[1] + steps + 1, engine="hf")
        rt.run(prompt[0].tolist(), 2, torch.get_num_threads())
        best = max(rt.run(prompt[0].tolist(), steps, torch.get_num_threads())[1] for _ in range(3))
        return 1e3 / best
    finally:
        for m in stubbed:
            del m.forward


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--loop", default="static", choices=["static", "hf"], help="decode loop (default static)")
    ap.add_argument("--profile", action="store_true", help="also the glue share of a onebit step (both loops)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    cfg = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    def build():
        torch.manual_seed(0)        # the same seed: the same weights each time
        return LlamaForCausalLM(cfg).to(dtype).eval()

    t = time.perf_counter()
    ob = onebit.quantize(build(), onebit.OneBitConfig(), progress=True).eval()   # in place
    gc.collect()
    print(f"built and quantized the onebit model in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rss0 = rss_bytes()
    t = time.perf_counter()
    fp = build()
    print(f"built fp model ({sum(p.numel() for p in fp.parameters()) / 1e9:.2f} B params) in "
          f"{time.perf_counter() - t:.0f} s", file=sys.stderr)

    print(machine("cpu"))
    cbw = copy_bandwidth()
    print(f"copy bandwidth (dst.copy_(src), 512 MiB, read+write): {cbw:.1f} GB/s")
    print(f"model: Llama {args.layers} layers, hidden {args.hidden}, FFN {args.ffn}, heads "
          f"{args.heads}/{args.kv_heads}, vocab {args.vocab}, {args.dtype}; prompt {args.prompt_len} "
          f"tokens, {args.new_tokens} new tokens, greedy, KV cache; median of {args.rounds} rounds\n")
    prompt = torch.randint(0, args.vocab, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    decode(fp, prompt[:, :4], 2, args.loop)  # warm-up (and builds the C++ kernels if needed)
    decode(ob, prompt[:, :4], 2, args.loop)
    rows = {"fp": [], "onebit": []}
    for r in range(args.rounds):
        for name, m in (("fp", fp), ("onebit", ob)):
            rows[name].append(decode(m, prompt, args.new_tokens, args.loop))
        print(f"round {r + 1}/{args.rounds}: fp {rows['fp'][-1][1]:.2f} tok/s, "
              f"onebit {rows['onebit'][-1][1]:.2f} tok/s", file=sys.stderr)

    print(f"{'model':>8} {'weights MiB':>12} {'read/step MiB':>13} {'prefill s':>10} {'decode tok/s':>13}"
          f" {'ms/token':>9} {'GB/s':>6}")
    for name, m in (("fp", fp), ("onebit", ob)):
        pre = statistics.median(r[0] for r in rows[name])
        tps = statistics.median(r[1] for r in rows[name])
        sb = step_bytes(m)
        print(f"{name:>8} {tensor_bytes(m) / 2**20:>12.0f} {sb / 2**20:>13.0f} {pre:>10.3f} {tps:>13.2f}"
              f" {1e3 / tps:>9.1f} {sb * tps / 1e9:>6.1f}")
    ratio = statistics.median(o[1] / f[1] for f, o in zip(rows["fp"], rows["onebit"]))
    print(f"\ndecode speedup onebit / {args.dtype}: {ratio:.2f}x (median of per-round ratios); "
          f"weight bytes read per step: {step_bytes(fp) / step_bytes(ob):.1f}x fewer")
    if args.profile:
        print(f"\nglue share of a onebit decode step ({torch.get_num_threads()} thread(s), "
              f"{args.new_tokens} steps under torch.profiler; glue = wall time outside {', '.join(COMPUTE_OPS)}):")
        for loop in ("hf", "static-hf", "static"):
            plain, prof_ms, share, share_plain = glue_share(ob, prompt, args.new_tokens, loop)
            print(f"  {loop:>9} loop: {plain:.1f} ms/step ({prof_ms:.1f} profiled), glue {share * 100:.1f}% "
                  f"of the profiled step, {share_plain * 100:.1f}% of the unprofiled one; with the "
                  f"matmuls stubbed out {glue_only(ob, prompt, args.new_tokens, loop):.2f} ms/step")
    from onebit.kernels import dispatch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"onebit backend: {dispatch.backend('cpu')}; process RSS with both models {rss_bytes() / 2**30:.1f} GiB "
          f"(onebit model alone {rss0 / 2**30:.1f} GiB before the fp one); peak RSS (ru_maxrss) "
          f"{peak / 2**30:.2f} GiB = {peak / tensor_bytes(fp):.2f}x the fp model")


if __name__ == "__main__":
    main()
