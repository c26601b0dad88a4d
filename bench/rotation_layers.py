"""Rotation on stories3M: per linear kind, the relative output error ||XWᵀ − XŴᵀ|| / ||XWᵀ|| of q1_0,
onebit (SVID) and ternary (weights only) on the inputs each layer sees in its own model, with and without
the residual-stream rotation (onebit.rotation), and the perplexity of those 256 tokens
(docs/methods.md, "Rotation").  Run: nice -n 19 python bench/rotation_layers.py"""
import copy

import torch
from torch import nn

import onebit
from onebit.models import load_model, load_tokenizer
from onebit.registry import get_handler_cls
from onebit.rotation import rotate_model

torch.set_num_threads(1)
path = "../shared/models/stories3M"
fp = load_model(path)
text = open("../shared/data/tinystories/tinystories_val_sample.txt").read()[:3000]
ids = torch.tensor([load_tokenizer(path)(text).input_ids[:256]])
rot = rotate_model(copy.deepcopy(fp), 0)
for meth, kw in (("q1_0", {}), ("onebit", {}), ("ternary", {"act_bits": 0})):
    for tag, base in (("plain", fp), ("rotated", rot)):
        inputs = {}
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach()))
                 for n, m in base.named_modules() if type(m) is nn.Linear and n != "lm_head"]
        with torch.no_grad():
            base(ids)
        for h in hooks:
            h.remove()
        q = onebit.quantize(copy.deepcopy(base), get_handler_cls(meth).config_cls(**kw), progress=False)
        qm, bm, errs = dict(q.named_modules()), dict(base.named_modules()), {}
        with torch.no_grad():
            for n, x in inputs.items():
                y = bm[n](x)
                errs.setdefault(n.split(".")[-1], []).append(((y - qm[n](x)).norm() / y.norm()).item())
            ppl = torch.nn.functional.cross_entropy(q(ids).logits[0, :-1], ids[0, 1:]).exp().item()
        print(f"{meth:8s} {tag:8s}", " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in errs.items()),
              f"| ppl {ppl:.4g}", flush=True)
