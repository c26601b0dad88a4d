"""Quality cost and end-to-end bits of quantized token embeddings (and head), in one process.

For each linear method (fp = linears untouched, rtn-w4 = RTN 4-bit g32, onebit = OneBit-SVID
--foldable, untrained) and each embedding setting (none, int8, int4, int2, q1): quantize a copy of
the model, compute the bit ledger from the tensors a checkpoint would hold (the same function
`onebit save` / `onebit info` use), and the perplexity with onebit's evaluator (the function
behind `onebit eval ppl`).  Rows are printed as they finish.

    python bench/embed_quant.py MODEL --data wikitext2 --seqlen 2048 --max-windows 8 \
        --methods fp,rtn-w4,onebit --embeds none,int8,int4,int2,q1
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time


def build(fp, method: str, embed: str):
    import onebit
    from onebit.pipelines.embeddings import quantize_embeddings
    from onebit.methods.rtn import RTNConfig

    m = copy.deepcopy(fp)
    if method == "fp":
        spec = quantize_embeddings(m, embed)
        return m, {}, spec
    cfg = {"rtn-w4": RTNConfig(bits=4, group_size=32),
           "onebit": onebit.OneBitConfig(foldable=True)}[method]
    onebit.quantize(m, cfg, progress=False, embed=embed)
    qc = m.config.quantization_config
    return m, qc["modules"], qc.get("embed")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", default="wikitext2")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--methods", default="fp,rtn-w4,onebit")
    p.add_argument("--embeds", default="none,int8,int4,int2,q1")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="append one JSON line per row to this file")
    a = p.parse_args()

    import torch

    from onebit.eval.data import load_text
    from onebit.eval.perplexity import perplexity, tokenize_text
    from onebit.formats.checkpoint import unique_state_dict
    from onebit.formats.ledger import ledger_from_state_dict
    from onebit.models import load_model, load_tokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    fp = load_model(a.model, dtype=torch.float32).eval()
    tok = load_tokenizer(a.model)
    ids = tokenize_text(tok, load_text(a.data))
    print(f"# {a.model}: {sum(p.numel() for p in fp.parameters()):,d} parameters, loaded in "
          f"{time.perf_counter() - t0:.1f}s; {a.data}, {a.max_windows} windows x {a.seqlen} tokens; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"{'linears':8s} {'embed':6s} {'bits/w linears':>14s} {'bits/w end-to-end':>17s} "
          f"{'MiB':>8s} {'embed+head MiB':>14s} {'ppl':>12s} {'s':>6s}", flush=True)
    for method in a.methods.split(","):
        for embed in a.embeds.split(","):
            m, modules, spec = build(fp, method, embed)
            led = ledger_from_state_dict(unique_state_dict(m), modules, spec)
            cats = led.bits_by_category()
            t1 = time.perf_counter()
            with torch.no_grad():
                r = perplexity(m, ids, a.seqlen, a.max_windows, progress=False)
            dt = time.perf_counter() - t1
            lin = led.bits_per_linear_weight if modules else 32.0
            row = {"model": a.model, "linears": method, "embed": embed, "bits_per_linear_weight": lin,
                   "bits_per_weight_end_to_end": led.bits_per_weight, "mib": led.total_bits / 8 / 2**20,
                   "embed_head_mib": (cats["embedding"] + cats["head"]) / 8 / 2**20, "ppl": r.ppl,
                   "windows": r.windows, "seqlen": a.seqlen, "data": a.data, "eval_s": dt}
            print(f"{method:8s} {embed:6s} {lin:14.4f} {led.bits_per_weight:17.4f} {row['mib']:8.2f} "
                  f"{row['embed_head_mib']:14.2f} {r.ppl:12.4g} {dt:6.0f}", flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
            del m
    return 0


if __name__ == "__main__":
    sys.exit(main())
