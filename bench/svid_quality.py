"""Perplexity of OneBit-SVID without training: fp vs SVD/NMF init, with and without the output LayerNorm.

This is the measurement behind OneBit's defaults (`--init svd`, `--no-layernorm`).

    python bench/svid_quality.py [--model ../shared/models/stories3M] [--max-windows N]
"""
from __future__ import annotations

import argparse
import copy
import time

import onebit
from onebit.eval.data import load_text
from onebit.eval.perplexity import perplexity, tokenize_text
from onebit.models import context_length, load_model, load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/stories3M")
    ap.add_argument("--data", nargs="+", default=["tinystories", "wikitext2"])
    ap.add_argument("--max-windows", type=int, default=None)
    args = ap.parse_args()
    fp = load_model(args.model)
    tok = load_tokenizer(args.model)
    seqlen = context_length(fp)
    ids = {d: tokenize_text(tok, load_text(d)) for d in args.data}
    variants = [("fp32 teacher", None)] + [
        (f"OneBit-SVID init={i} layernorm={ln}", onebit.OneBitConfig(init=i, layernorm=ln))
        for i in ("svd", "nmf") for ln in (False, True)]
    print(f"model {args.model}, seqlen {seqlen}, windows: "
          + ", ".join(f"{d} {min(len(v) // seqlen, args.max_windows or 10**9)}" for d, v in ids.items()))
    print(f"{'variant':40s} " + " ".join(f"{d:>14s}" for d in args.data) + "   quantize s")
    for name, cfg in variants:
        t = time.perf_counter()
        m = fp if cfg is None else onebit.quantize(copy.deepcopy(fp), cfg, progress=False)
        tq = time.perf_counter() - t
        ppl = [perplexity(m, ids[d], seqlen, args.max_windows, progress=False).ppl for d in args.data]
        print(f"{name:40s} " + " ".join(f"{p:14.2f}" for p in ppl) + f"   {0 if cfg is None else tq:10.2f}")


if __name__ == "__main__":
    main()
