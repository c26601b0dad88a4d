"""``onebit demo``: the README's main job, end to end on a default model.

Quantize the default model with OneBit (SVID init), save the packed
checkpoint, reload it, then distil it briefly from the fp model on text the
fp model generates (a few CPU minutes; --distill-steps 0 skips it), and
print perplexity fp vs 1-bit before and after distillation, the bit ledger
and a generated sample from each.  The model resolves from --model, then
$ONEBIT_DEMO_MODEL, then ../shared/models/stories3M, else a small hub model.
"""
from __future__ import annotations

import copy
import logging
import time

from .common import add_common, progress_enabled

log = logging.getLogger("onebit")


def register(sub) -> None:
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
    p.add_argument("--distill-steps", type=int, default=400,
                   help="optimiser steps of the short distillation, 0 skips it (default: %(default)s)")
    p.add_argument("--polish-steps", type=int, default=0,
                   help="then this many steps of the polish stage: latents reset, KL only, lr 5e-4 "
                   "(onebit.distill.stages). It pays after a plateau, not in a run this short: 400 + 100 "
                   "steps gave 19.34 vs 19.40 for 400 alone (default: %(default)s)")
    p.add_argument("--distill-samples", type=int, default=256,
                   help="teacher-generated sequences of 128 tokens (cached; default: %(default)s)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..api import quantize
    from ..eval.data import data_dir
    from ..eval.perplexity import perplexity, tokenize_text
    from ..eval.data import load_text
    from ..formats.checkpoint import save_checkpoint
    from ..loading import load_checkpoint
    from ..generate import generate_text
    from ..methods.onebit import OneBitConfig
    from ..models import context_length, load_model, load_tokenizer, resolve_demo_model

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
    kd = None
    if args.distill_steps > 0:
        kd, t_kd = _distill(fp, args, init=args.init, progress=prog)
        save_checkpoint(kd, args.out, tokenizer=tok, source=spec, overwrite=True)
        kd = load_checkpoint(args.out)
        r_kd = perplexity(kd, ids, seqlen, args.max_windows, progress=prog, desc="ppl distilled")
        extra = f" + {args.polish_steps} (polish)" if args.polish_steps > 0 else ""
        print(f"== distilled for {args.distill_steps}{extra} steps in {t_kd:.0f}s, saved to {args.out}")

    print("\n== bit ledger")
    print(ledger.format())
    print("\n== perplexity")
    print(f"   fp                : {r_fp.ppl:10.2f}")
    print(f"   OneBit-SVID       : {r_q.ppl:10.2f}   ({r_q.ppl / r_fp.ppl:.1f}x; SVID alone, no "
          "distillation)")
    if kd is not None:
        print(f"   OneBit distilled  : {r_kd.ppl:10.2f}   ({r_kd.ppl / r_fp.ppl:.1f}x; "
              f"{args.distill_steps}{extra} steps; longer runs: 'onebit distill')")
    print("\n== samples")
    print(f"   fp          : {generate_text(fp, tok, args.prompt, args.max_new_tokens)!r}")
    print(f"   1-bit SVID  : {generate_text(q2, tok, args.prompt, args.max_new_tokens)!r}")
    if kd is not None:
        print(f"   1-bit + KD  : {generate_text(kd, tok, args.prompt, args.max_new_tokens)!r}")
    return 0 if same else 1


def _distill(fp, args, init: str, progress: bool):
    """A short OneBit distillation of ``fp`` (the same trainer as ``onebit distill``)."""
    from ..distill.data import teacher_data
    from ..distill.stages import polish
    from ..distill.student import freeze, pack_student, student_from_teacher
    from ..distill.trainer import TrainConfig, Trainer
    from ..methods.onebit import OneBitConfig

    t0 = time.perf_counter()
    data = teacher_data(fp, args.distill_samples, 128, seed=0, progress=progress)
    student, qc = student_from_teacher(fp, OneBitConfig(init=init))
    names = freeze(student, qc["modules"])
    # lr 2.5e-3: better than 5e-3 at every point of the 400-step trials (bench/results/sweep_stories3m)
    cfg = TrainConfig(steps=args.distill_steps, batch_size=8, lr=2.5e-3, warmup=5, alpha=1.0)
    tr = Trainer(fp, student, data, cfg, names, progress=progress)
    tr.train()
    if args.polish_steps > 0:
        polish(tr, args.polish_steps, modules=qc["modules"])
    return pack_student(student, qc), time.perf_counter() - t0
