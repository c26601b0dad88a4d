"""``onebit demo``: the README's main job, end to end on a default model.

Quantize the default model with OneBit (SVID init), save the packed
checkpoint, reload it, and print perplexity fp vs 1-bit, the bit ledger and a
generated sample from each.  The model resolves from --model, then
$ONEBIT_DEMO_MODEL, then ../shared/models/stories3M, else a small hub model.
"""
from __future__ import annotations

import copy
import logging
import time

log = logging.getLogger("onebit")


def register(sub) -> None:
    from .main import add_common

    p = sub.add_parser("demo", help="quantize the default model, evaluate, generate (the quick start)",
                       description=__doc__.split("\n\n", 1)[1],
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model to use (default: see above)")
    p.add_argument("--out", default="out/demo", help="where to write the packed checkpoint "
                   "(default: %(default)s; replaced if it exists)")
    p.add_argument("--data", default=None,
                   help="perplexity text (default: tinystories if available, else wikitext2)")
    p.add_argument("--max-windows", type=int, default=40,
                   help="perplexity windows to score (default: %(default)s)")
    p.add_argument("--init", default="svd", choices=["svd", "nmf"], help="SVID init (default: %(default)s)")
    p.add_argument("--prompt", default="Once upon a time", help="generation prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..api import quantize
    from ..eval.data import data_dir
    from ..eval.perplexity import perplexity, tokenize_text
    from ..eval.data import load_text
    from ..formats.checkpoint import load_checkpoint, save_checkpoint
    from ..generate import generate_text
    from ..methods.onebit import OneBitConfig
    from ..models import context_length, load_model, load_tokenizer, resolve_demo_model
    from .common import progress_enabled

    prog = progress_enabled(args)
    spec = resolve_demo_model(args.model)
    data = args.data or ("tinystories" if data_dir() is not None
                         and (data_dir() / "tinystories").is_dir() else "wikitext2")
    print(f"== onebit demo: model {spec}, perplexity on {data} ({args.max_windows} windows)")
    fp = load_model(spec)
    tok = load_tokenizer(spec)
    seqlen = context_length(fp)
    ids = tokenize_text(tok, load_text(data))
    n_lin = sum(p.numel() for n, p in fp.named_parameters() if p.dim() == 2 and "embed" not in n
                and "lm_head" not in n)
    print(f"   {type(fp).__name__}: {sum(p.numel() for p in fp.parameters()):,d} parameters, "
          f"{n_lin:,d} in linear layers, context {seqlen}")

    r_fp = perplexity(fp, ids, seqlen, args.max_windows, progress=prog, desc="ppl fp")
    t0 = time.perf_counter()
    q = quantize(copy.deepcopy(fp), OneBitConfig(init=args.init), progress=prog)
    tq = time.perf_counter() - t0
    ledger = save_checkpoint(q, args.out, tokenizer=tok, source=spec, overwrite=True)
    q2 = load_checkpoint(args.out)
    probe = ids[: min(64, ids.numel())].unsqueeze(0)
    with torch.no_grad():
        same = torch.allclose(q(probe).logits, q2(probe).logits, rtol=1e-5, atol=1e-5)
    print(f"== quantized with OneBit-SVID ({args.init}) in {tq:.1f}s, saved to {args.out}, "
          f"reloaded: logits {'identical' if same else 'DIFFER'}")
    r_q = perplexity(q2, ids, seqlen, args.max_windows, progress=prog, desc="ppl 1-bit")

    print("\n== bit ledger")
    print(ledger.format())
    print("\n== perplexity")
    print(f"   fp                : {r_fp.ppl:10.2f}")
    print(f"   OneBit-SVID       : {r_q.ppl:10.2f}   ({r_q.ppl / r_fp.ppl:.1f}x; SVID alone, no "
          "distillation: see 'onebit distill')")
    print("\n== samples")
    print(f"   fp    : {generate_text(fp, tok, args.prompt, args.max_new_tokens)!r}")
    print(f"   1-bit : {generate_text(q2, tok, args.prompt, args.max_new_tokens)!r}")
    return 0 if same else 1
