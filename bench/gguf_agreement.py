"""Does llama.cpp compute what onebit computes?  Mean KL(onebit ‖ llama.cpp) and top-1 agreement.

For each model and method: quantize (or take a trained checkpoint), ``onebit export`` it, run
the same token windows through onebit (fp32) and through llama.cpp (llama-cpp-python, the
``llamacpp`` extra) and compare the next-token distributions at every position.

llama.cpp rounds activations to 8 bits inside its quantized dot products (Q8_0 blocks of 32 for
Q1_0/Q2_0/Q4_0/Q8_0, Q8_K blocks of 256 for TQ2_0), to fp16 for f16 weights, and keeps its KV
cache in fp16.  The "act8 sim" columns run the exported weights decoded exactly
(``onebit.export.verify``) with that activation rounding simulated in torch: KL(onebit ‖ sim)
is the share of the difference the activation rounding explains.

    python bench/gguf_agreement.py                                    # stories3M + SmolLM2, PTQ
    python bench/gguf_agreement.py --models stories3m --checkpoint onebit-foldable=out/s3m-kd
    python bench/gguf_agreement.py --models smollm2 --approximate --methods rank \
        --checkpoint rank=out/smol/rank-bw-1024-kd          # a method with no exact form
Targets (issue 16): mean KL ≤ 0.01 and top-1 ≥ 98%.  Each row also has the perplexity of the
windows' next tokens in onebit and in llama.cpp: what an approximate export costs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = {
    "stories3m": (str(SHARED / "models/stories3M"), "tinystories"),
    "smollm2": (str(SHARED / "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"), "wikitext2"),
}
DEFAULT_METHODS = "onebit-foldable,q1_0,bitnet,ternary,rtn-w4g32"   # names of onebit.export.spec.PRESETS


def kl_top1(p_logits: torch.Tensor, q_logits: torch.Tensor) -> tuple[float, float]:
    lp, lq = torch.log_softmax(p_logits.float(), -1), torch.log_softmax(q_logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    return kl, (p_logits.argmax(-1) == q_logits.argmax(-1)).float().mean().item()


def _round_act(x: torch.Tensor, block: int, fp16_scale: bool) -> torch.Tensor:
    shape = x.shape
    n = shape[-1]
    if n % block:
        return x
    g = x.reshape(-1, n // block, block).float()
    d = g.abs().amax(-1, keepdim=True) / 127
    if fp16_scale:
        d = d.half().float()
    q = torch.where(d > 0, torch.round(g / torch.where(d > 0, d, 1)), 0)
    return (q * d).reshape(shape).to(x.dtype)


def act8_hooks(model, gguf_types: dict[str, str]):
    """Forward pre-hooks rounding each linear's input the way llama.cpp's dot products do."""
    from onebit.export.gguf import LINEARS

    hooks = []
    for i, layer in enumerate(model.model.layers):
        for hf, gg in LINEARS.items():
            t = gguf_types.get(f"blk.{i}.{gg}.weight")
            mod = layer.get_submodule(hf)
            if t == "tq2_0":
                fn = lambda m, a: (_round_act(a[0], 256, False),)  # noqa: E731  (Q8_K)
            elif t in ("q1_0", "q2_0", "q4_0", "q8_0"):
                fn = lambda m, a: (_round_act(a[0], 32, True),)  # noqa: E731  (Q8_0)
            elif t == "f16":
                fn = lambda m, a: (a[0].half().float(),)  # noqa: E731
            else:
                continue
            hooks.append(mod.register_forward_pre_hook(fn))
    head_t = gguf_types.get("output.weight", gguf_types.get("token_embd.weight"))
    if head_t == "f16":
        hooks.append(model.lm_head.register_forward_pre_hook(lambda m, a: (a[0].half().float(),)))
    elif head_t == "q6_k":              # Q8_K activations: blocks of 256, fp32 scale
        hooks.append(model.lm_head.register_forward_pre_hook(lambda m, a: (_round_act(a[0], 256, False),)))
    elif head_t in ("q1_0", "q4_0", "q8_0"):
        hooks.append(model.lm_head.register_forward_pre_hook(lambda m, a: (_round_act(a[0], 32, True),)))
    return hooks


def window_ppl(logits: list[torch.Tensor], windows: torch.Tensor) -> float:
    """Perplexity of each window's next tokens under ``logits`` (one ``[seqlen, vocab]`` per window)."""
    nll = [torch.nn.functional.cross_entropy(lg[:-1].float(), w[1:], reduction="sum") for lg, w in zip(logits, windows)]
    return float(torch.exp(torch.stack(nll).sum() / (windows.shape[0] * (windows.shape[1] - 1))))


def llama_cpp_logits(path: Path, windows: torch.Tensor, threads: int) -> list[torch.Tensor]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=windows.shape[1], n_batch=windows.shape[1],
                n_threads=threads, verbose=False)
    out = []
    try:
        for w in windows:
            llm.reset()
            llm.eval([int(t) for t in w])
            out.append(torch.tensor(np.array(llm.scores[: w.numel()]), dtype=torch.float32))
    finally:
        llm.close()
    return out


def run_one(model_name: str, method: str, ckpt: str | None, fp, spec: str, windows: torch.Tensor,
            work: Path, threads: int, embed_type: str = "f16", pad: str = "auto",
            approximate: bool = False) -> dict:
    import onebit
    from onebit.export.gguf import export_gguf
    from onebit.export.spec import PRESETS, save_quantized
    from onebit.export.verify import dense_model_from_gguf
    from onebit.formats.gguf_header import read_gguf_header

    if ckpt is None:
        name, kw = PRESETS[method]
        ckpt = save_quantized(fp, work / f"{model_name}-{method}", name, spec, tokenizer=TOKENIZERS[model_name],
                              overwrite=True, **kw)
    gguf_path = work / f"{model_name}-{method}.gguf"
    summary = export_gguf(ckpt, gguf_path, overwrite=True, embed_type=embed_type, pad=pad,
                          approximate=approximate)
    model = onebit.load(ckpt).float().eval()
    dense = dense_model_from_gguf(gguf_path, model.config)
    types = {t.name: t.type_name for t in read_gguf_header(gguf_path).tensors}
    hooks = act8_hooks(dense, types)
    ref, sim = [], []
    with torch.no_grad():
        for w in windows:
            ref.append(model(w[None]).logits[0].float())
            sim.append(dense(w[None]).logits[0].float())
    for h in hooks:
        h.remove()
    lcpp = llama_cpp_logits(gguf_path, windows, threads)
    R, S, L = torch.cat(ref), torch.cat(sim), torch.cat(lcpp)
    kl, top1 = kl_top1(R, L)
    kl_sim, top1_sim = kl_top1(R, S)
    kl_rest, _ = kl_top1(S, L)
    return {"model": model_name, "method": method, "checkpoint": ckpt, "tokens": int(R.shape[0]),
            "embed_type": types.get("token_embd.weight"),
            "linear_types": sorted({t for n, t in types.items() if n.startswith("blk.") and "norm" not in n}),
            "bits_end_to_end": round(summary.bits_per_weight(), 4),
            "ppl_onebit": window_ppl(ref, windows), "ppl_llama_cpp": window_ppl(lcpp, windows),
            "kl": kl, "top1": top1, "kl_act8_sim": kl_sim, "top1_act8_sim": top1_sim, "kl_sim_vs_llama_cpp": kl_rest}


TOKENIZERS: dict = {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="stories3m,smollm2")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated names of onebit.export.spec.PRESETS (default: %(default)s)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=PATH",
                    help="use this trained checkpoint for METHOD (with a single --models)")
    ap.add_argument("--embed-type", default="f16", help="onebit export --embed-type (default: %(default)s)")
    ap.add_argument("--pad", default="auto", choices=["auto", "on", "off"], help="onebit export --pad")
    ap.add_argument("--approximate", action="store_true",
                    help="onebit export --approximate (methods with no exact llama.cpp form)")
    ap.add_argument("--windows", type=int, default=4, help="windows per model (default 4)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from onebit.eval.data import load_text
    from onebit.eval.perplexity import tokenize_text, windows as make_windows
    from onebit.models import load_model, load_tokenizer

    ckpts = dict(c.split("=", 1) for c in args.checkpoint)
    print(f"# gguf_agreement: {machine_line()}")
    print(f"# {args.windows} windows x {args.seqlen} tokens per model; llama.cpp {args.threads} threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mname in args.models.split(","):
            spec, data = MODELS[mname]
            fp = load_model(spec, dtype=torch.float32)
            TOKENIZERS[mname] = tok = load_tokenizer(spec)
            ids = tokenize_text(tok, load_text(data))
            w = make_windows(ids, args.seqlen, args.windows)
            for method in args.methods.split(","):
                t0 = time.perf_counter()
                r = run_one(mname, method, ckpts.get(method), fp, spec, w, Path(tmp), args.threads,
                            args.embed_type, args.pad, args.approximate)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(r)
                ok = "ok" if r["kl"] <= 0.01 and r["top1"] >= 0.98 else "MISS"
                print(f"{mname:10s} {method:16s} {'/'.join(r['linear_types']):16s} emb {r['embed_type']:5s} "
                      f"{r['bits_end_to_end']:6.3f} b/w  ppl onebit {r['ppl_onebit']:.2f} llama.cpp "
                      f"{r['ppl_llama_cpp']:.2f}  KL {r['kl']:.5f}  top-1 {r['top1']:.4f}  "
                      f"| act8 sim: KL {r['kl_act8_sim']:.5f} top-1 {r['top1_act8_sim']:.4f}  "
                      f"sim vs llama.cpp KL {r['kl_sim_vs_llama_cpp']:.5f}  [{ok}]", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
