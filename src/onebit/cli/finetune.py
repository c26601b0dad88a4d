"""``onebit finetune CHECKPOINT OUT --data FILE``: LoRA adapters on a frozen packed model.

The packed layers (any method's) stay as they are; low-rank adapters ``y = base(x) + x Aᵀ Bᵀ · α/r``
on the --targets layers learn the language-model loss of the training text you name (a .txt, or a
.jsonl with a 'text' field; evaluation files are refused).  The last --holdout of its tokens is held
aside, never trained on: its perplexity before and after is printed.  OUT is a packed checkpoint
holding the adapters (onebit.load and from_pretrained rebuild them).  --merge folds them into the
base instead, which is exact only for a float weight: packed layers refuse it.
"""
from __future__ import annotations

import argparse
import logging

from ..errors import OneBitError
from .common import add_common, progress_enabled, seqlen_type

log = logging.getLogger("onebit")

EVAL_NAMES = ("wikitext2", "c4", "tinystories")


def register(sub) -> None:
    p = sub.add_parser("finetune", help="train LoRA adapters on a packed checkpoint (QLoRA style)",
                       description=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="packed onebit checkpoint directory")
    p.add_argument("out", metavar="OUT", help="output directory for the checkpoint with adapters")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="training text (.txt, or .jsonl with a 'text' field); never an evaluation set")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="fraction of the text's tokens (its tail) held aside for the ppl (default: %(default)s)")
    a = p.add_argument_group("adapters")
    a.add_argument("--rank", type=int, default=8, help="LoRA rank r (default: %(default)s)")
    a.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha; the update is scaled by alpha/r "
                   "(default: %(default)s)")
    a.add_argument("--targets", default="all",
                   help="comma-separated layer names or suffixes (q_proj,v_proj,...) or 'all' packed "
                   "layers (default: %(default)s)")
    a.add_argument("--merge", action=argparse.BooleanOptionalAction, default=False,
                   help="fold the adapters into the base weights (exact only for float weights; packed "
                   "layers refuse it) instead of saving them (default: --no-merge)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=100, help="optimiser steps (default: %(default)s)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    t.add_argument("--warmup", type=int, default=10, help="linear warmup steps, then cosine (default: 10)")
    t.add_argument("--seqlen", type=seqlen_type, default=256,
                   help="tokens per window; 0 = the model's context, capped at 2048 (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=8, help="windows per step (default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="seed of the windows and A's init (default: 0)")
    t.add_argument("--eval-windows", type=int, default=None, metavar="N",
                   help="held-aside windows scored before and after (default: all)")
    t.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="stop training after this many seconds (the adapters so far are saved)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..calibration import read_training_text
    from ..distill.finetune import FinetuneConfig, finetune, split_holdout
    from ..eval.perplexity import tokenize_text
    from ..formats.checkpoint import is_packed_checkpoint, prepare_output_dir, save_checkpoint
    from ..models import check_model_spec, context_length, load_model, load_tokenizer

    # ---- everything a user can get wrong fails here, before any loading or training
    cfg = FinetuneConfig(rank=args.rank, alpha=args.alpha,
                         targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                         steps=args.steps, lr=args.lr, seqlen=args.seqlen or 2, batch_size=args.batch_size,
                         holdout=args.holdout, warmup=args.warmup, seed=args.seed,
                         eval_windows=args.eval_windows, merge=args.merge)
    cfg.validate()
    check_model_spec(args.checkpoint)
    if not is_packed_checkpoint(args.checkpoint):
        raise OneBitError(f"'{args.checkpoint}' is not a packed onebit checkpoint; quantize it first "
                          "(onebit quantize MODEL OUT)")
    if args.data in EVAL_NAMES:
        raise OneBitError(f"--data {args.data} is an evaluation dataset; never train on it")
    text = read_training_text(args.data)  # refuses evaluation files by content
    prepare_output_dir(args.out, args.overwrite)

    torch.manual_seed(args.seed)
    model = load_model(args.checkpoint)
    tok = load_tokenizer(args.checkpoint)
    cfg.seqlen = args.seqlen or context_length(model)  # 0: the model's context (capped at 2048)
    if cfg.seqlen > context_length(model, cap=1 << 30):
        raise OneBitError(f"--seqlen {cfg.seqlen} exceeds the model's context {context_length(model, 1 << 30)}")
    ids = tokenize_text(tok, text)
    if int(ids.max()) >= model.config.vocab_size:
        raise OneBitError(f"'{args.data}' has token id {int(ids.max())} >= the model's vocabulary")
    train_ids, held_ids = split_holdout(ids, cfg.holdout, cfg.seqlen)
    qc = model.config.quantization_config
    log.info("%s: %s training tokens, %s held aside", args.data, f"{train_ids.numel():,d}",
             f"{held_ids.numel():,d}")
    res = finetune(model, qc, train_ids, held_ids, cfg, progress=progress_enabled(args),
                   time_limit=args.time_limit)
    save_checkpoint(model, args.out, tokenizer=tok, source=args.checkpoint, overwrite=args.overwrite)
    kept = "merged into the base" if cfg.merge else "kept as adapters"
    print(f"finetuned {args.checkpoint} -> {args.out}: {len(res.adapters)} LoRA adapters (rank {cfg.rank}, "
          f"{res.trainable:,d} parameters, {kept}), {res.steps} steps in {res.seconds:.0f}s")
    print(f"held-aside ppl ({held_ids.numel():,d} tokens of {args.data}): {res.ppl_before:.3f} -> "
          f"{res.ppl_after:.3f}")
    return 0
