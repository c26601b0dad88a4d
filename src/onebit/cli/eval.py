"""``onebit eval ...``: perplexity (and, as they land, zero-shot, KLD, harness).

Each evaluation is a sub-subcommand registered in ``EVALS``.
"""
from __future__ import annotations

import json

EVALS = ["ppl"]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model or packed checkpoint",
                       description="Evaluate a model or packed checkpoint.")
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    esub.required = True
    for name in EVALS:
        globals()[f"register_{name}"](esub)


def register_ppl(esub) -> None:
    from .common import add_dtype_arg
    from .main import add_common

    p = esub.add_parser(
        "ppl", help="perplexity by the GPTQ/OneBit convention",
        description="Perplexity by the GPTQ/OneBit convention: the text (WikiText-2 raw test rows "
        "joined with '\\n\\n'; C4: GPTQ's c4-new, 1100 validation documents joined with ' ', 256 "
        "windows; TinyStories sample; or any text file) is tokenized once and cut into "
        "non-overlapping windows of --seqlen tokens, the remainder dropped; ppl = exp(mean NLL).")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--data", action="append", default=None,
                   help="wikitext2, c4, tinystories or a text file; repeatable (default: wikitext2)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="window length (default: the model's context, capped at 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    add_dtype_arg(p)
    add_common(p)
    p.set_defaults(func=run_ppl)


def run_ppl(args) -> int:
    from ..config import parse_dtype
    from ..errors import OneBitError
    from ..eval.perplexity import dataset_perplexity
    from ..models import context_length, load_model, load_tokenizer
    from .common import progress_enabled, write_json_atomic

    if args.max_windows is not None and args.max_windows < 1:
        raise OneBitError(f"--max-windows must be at least 1, got {args.max_windows}")
    if args.batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {args.batch_size}")
    model = load_model(args.model, dtype=parse_dtype(args.dtype))
    tok = load_tokenizer(args.model)
    seqlen = args.seqlen or context_length(model)
    if seqlen > context_length(model, cap=1 << 30):
        raise OneBitError(f"--seqlen {seqlen} exceeds the model's context {context_length(model, 1 << 30)}")
    results = {}
    for data in args.data or ["wikitext2"]:
        r = dataset_perplexity(model, tok, data, seqlen, args.max_windows, args.batch_size,
                               progress_enabled(args))
        results[data] = r.as_dict()
        print(f"{data}: ppl {r.ppl:.4f} ({r.windows} windows x {r.seqlen} tokens, {r.seconds:.1f}s)")
    if args.json:
        write_json_atomic(args.json, {"model": args.model, "perplexity": results})
    return 0
