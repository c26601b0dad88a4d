"""Decode and prefill speed on a real model: SmolLM2-135M in onebit's runtime and in llama.cpp.

The teacher (``../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf``, its
weights dequantized) runs in onebit's runtime in fp32 and bf16, and quantized by each method of
``--methods`` (packed modules, onebit's kernels; names of ``onebit.export.spec.PRESETS``).  With
llama-cpp-python installed (the ``llamacpp`` extra) the same model also runs in llama.cpp: the fp
model exported as F16, llama.cpp's own Q4_0 and TQ2_0 of it (``llama_model_quantize``), and
onebit's exports of the packed checkpoints (``onebit export``; SmolLM2's 576-wide rows are not a
multiple of 128, so 1-bit linears go to Q2_0 where Q1_0 does not fit).

Every variant runs a prefill of ``--prompt`` tokens, then ``--new-tokens`` single-token steps with
the KV cache, for each thread count (onebit's runtime: ``gguf_speed.OneBitRuntime``, i.e. the static
decode loop ``onebit.generate.StaticDecoder`` since issue 19; the SmolLM2 table in docs/kernels.md
was measured with transformers' forward and dynamic cache before it); variants alternate for ``--rounds`` rounds; medians are printed
with the ratio of each variant's decode to onebit's fp32 and to llama.cpp's F16.  Speed only:
quality is ``onebit compare``'s job.

    python bench/smollm2_speed.py                        # 1 and 2 threads, 3 rounds
    python bench/smollm2_speed.py --rounds 1 --new-tokens 8 --no-llamacpp   # quick
Run it on an otherwise idle machine; it prints the load average before and after.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from gguf_speed import OneBitRuntime  # noqa: E402  (the same loop as the TinyLlama-shape bench)

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT.parent / "shared" / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_FTYPES = {"Q4_0": 2, "TQ2_0": 37}


def weight_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def build(args, work: Path) -> tuple[dict, dict]:
    """``({name: runner}, {name: bytes})`` for every variant."""
    import onebit
    from onebit.export.spec import PRESETS
    from onebit.models import load_model, load_tokenizer
    from onebit.registry import get_handler_cls

    fp = load_model(str(args.model), dtype=torch.float32)
    runners, sizes = {}, {}
    runners["onebit fp32"] = OneBitRuntime(model=fp)
    sizes["onebit fp32"] = weight_bytes(fp)
    bf = copy.deepcopy(fp).to(torch.bfloat16)
    runners["onebit bf16"] = OneBitRuntime(model=bf)
    sizes["onebit bf16"] = weight_bytes(bf)
    ckpts = {}
    tok = load_tokenizer(str(args.model)) if args.llamacpp else None
    for name in args.methods:
        method, kw = PRESETS[name]
        m = copy.deepcopy(fp)
        t0 = time.perf_counter()
        onebit.quantize(m, get_handler_cls(method).config_cls(**kw), progress=False)
        print(f"quantized {name} in {time.perf_counter() - t0:.0f}s", flush=True)
        runners[f"onebit {name}"] = OneBitRuntime(model=m)
        sizes[f"onebit {name}"] = weight_bytes(m)
        if args.llamacpp:
            ckpts[name] = work / name
            onebit.save(m, str(ckpts[name]), source=str(args.model), tokenizer=tok, overwrite=True)
    if args.llamacpp:
        from gguf_speed import LlamaCpp, llama_quantize
        from onebit.export.gguf import export_gguf

        fp_dir = work / "fp"
        plain = type(fp)(fp.config)          # a GGUF-loaded model refuses save_pretrained
        plain.load_state_dict(fp.state_dict())
        plain.save_pretrained(fp_dir)
        del plain
        tok.save_pretrained(fp_dir)
        files = {"llama.cpp F16": work / "f16.gguf"}
        export_gguf(fp_dir, files["llama.cpp F16"], overwrite=True)
        for tname, ft in LLAMA_FTYPES.items():
            files[f"llama.cpp {tname}"] = work / f"{tname}.gguf"
            llama_quantize(files["llama.cpp F16"], files[f"llama.cpp {tname}"], ft, False)
        for name, ck in ckpts.items():
            f = work / f"onebit-{name}.gguf"
            s = export_gguf(ck, f, embed_type=args.embed_type, overwrite=True)
            files[f"llama.cpp ← onebit {name}"] = f
            print(f"exported {name}: {s.bits_per_weight():.3f} bits per weight end to end", flush=True)
        for n, f in files.items():
            runners[n] = LlamaCpp(f)
            sizes[n] = f.stat().st_size
    gc.collect()
    return runners, sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(TEACHER), help="the fp model (default: SmolLM2-135M in ../shared)")
    ap.add_argument("--methods", default="onebit-foldable,q1_0,bitnet,ternary,rtn-w4g32",
                    help="comma-separated names of onebit.export.spec.PRESETS")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512, help="prefill tokens (default 512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--embed-type", default="q8_0", help="onebit export's embedding type (default q8_0)")
    ap.add_argument("--no-llamacpp", dest="llamacpp", action="store_false", help="onebit's runtime only")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    if args.llamacpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python is not installed (pip install -e '.[llamacpp]'): onebit's runtime only")
            args.llamacpp = False
    threads = [int(t) for t in args.threads.split(",")]
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="smollm2_speed_"))
    runners, sizes = build(args, work)
    vocab = 49152
    prompt = [int(t) for t in torch.randint(3, vocab, (args.prompt,), generator=torch.Generator().manual_seed(0))]
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for t in threads:
            for name, run in runners.items():
                res.setdefault((name, t), []).append(run.run(prompt, args.new_tokens, t))
        print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in res.items()}
    print(f"\nSmolLM2-135M ({args.model}); prefill {args.prompt} tokens, decode {args.new_tokens} tokens; "
          f"medians of {args.rounds} rounds; tok/s (ratio to onebit fp32 / to llama.cpp F16)")
    hdr = f"{'variant':34s} {'MiB':>7s}"
    for t in threads:
        hdr += f" | {t}T decode  vs fp32  vs F16 | prefill  vs fp32  vs F16"
    print(hdr)
    for name in runners:
        line = f"{name:34s} {sizes[name] / 2**20:7.1f}"
        for t in threads:
            p, d = med[(name, t)]
            fp_p, fp_d = med[("onebit fp32", t)]
            f16 = med.get(("llama.cpp F16", t))
            vs = (lambda v, i: f"{v / f16[i]:5.2f}x") if f16 else (lambda v, i: f"{'-':>6s}")  # noqa: E731
            line += (f" | {d:9.1f} {d / fp_d:6.2f}x {vs(d, 1)}"
                     f" | {p:7.1f} {p / fp_p:6.2f}x {vs(p, 0)}")
        print(line)
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
