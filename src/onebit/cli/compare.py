"""``onebit compare MODEL --methods ...``: every method on one model, one table (+ CSV, PNG)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..compare import DEFAULT_MAX_WINDOWS, DEFAULT_METHODS, MODIFIERS
from ..errors import OneBitError
from .common import (
    SEQLEN_HELP, add_common, check_paths_exist, progress_enabled, seqlen_type, write_text_atomic)

log = logging.getLogger("onebit")


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="quantize a model with several methods and tabulate size vs quality",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize MODEL with each method spec, save each packed checkpoint to a temporary "
        "directory, and report one row per method: bits per weight of the quantized linears (bit "
        "ledger: codes, scales, zero points) and end to end (every stored bit over the original "
        "model's weights), size of the checkpoint on disk, perplexity per dataset, mean "
        "KL(teacher || method) per token and top-1 agreement on the first dataset, (with "
        "--zeroshot-limit) accuracy +- standard error on the six zero-shot tasks and LAMBADA and "
        "the six-task average, quantization time and memory: the rise of the RSS while quantizing "
        "(sampled every 20 ms), or with --isolate the peak RSS (ru_maxrss) of a fresh child process "
        "that loads the teacher, quantizes and saves.  By default at most "
        f"{DEFAULT_MAX_WINDOWS} perplexity windows per dataset (said in the report); --full scores them all.  "
        "Writes OUT/compare.md, OUT/compare.csv and OUT/ppl_vs_bits.png, rewritten after every "
        "method, so an interrupted run keeps the rows it finished.",
        epilog="method specs: fp (baseline), onebit, onebit-foldable, onebit-w1a8, q1_0, bitnet, ternary, "
        "rtn-..., gptq-...\n"
        f"  modifiers: {MODIFIERS}\n"
        "  e.g. rtn-w4 (4-bit per channel), rtn-w2-g64 (groups of 64), rtn-w4-asym (zero point),\n"
        "       gptq-w3-g64, gptq-w4-actorder, rtn-w4-a8 (int8 activations), bitnet-a0 (fp activations)\n"
        "example:\n"
        "  onebit compare ../shared/models/stories3M --methods fp,onebit,bitnet,ternary,rtn-w4,gptq-w3-g64 \\\n"
        "      --data wikitext2,tinystories --max-windows 40 --out out/compare-s3m")
    p.add_argument("model", metavar="MODEL", help="hub id or local model directory (the teacher)")
    p.add_argument("--methods", default="fp," + DEFAULT_METHODS,
                   help="comma-separated method specs (default: %(default)s)")
    p.add_argument("--data", default="wikitext2", help="comma-separated datasets: wikitext2, c4, "
                   "tinystories or a text FILE (default: %(default)s)")
    p.add_argument("--seqlen", type=seqlen_type, default=None,
                   help="perplexity window in tokens; " + SEQLEN_HELP.replace("%(default)s", "the model's context"))
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help=f"perplexity (and KL) windows per dataset (default: {DEFAULT_MAX_WINDOWS}, "
                   "an answer in minutes; --full for all)")
    p.add_argument("--full", action="store_true",
                   help="score every window of every dataset (the published-number setting; slow: "
                   "all of WikiText-2 for every method can take an hour)")
    p.add_argument("--calib-samples", type=int, default=128,
                   help="teacher-generated calibration sequences, shared by all methods (default: 128)")
    p.add_argument("--calib-seqlen", type=int, default=256, help="tokens per calibration sequence (256)")
    p.add_argument("--zeroshot-limit", type=int, default=0, metavar="N",
                   help="also score the paper's six zero-shot tasks on N items each (default 0: skip; "
                   "the column shows n/a)")
    p.add_argument("--distill", type=int, default=0, metavar="STEPS",
                   help="distil each method's trainable form for STEPS steps first (needs onebit.distill)")
    p.add_argument("--isolate", action="store_true",
                   help="quantize each method in a fresh child process (loads the teacher, quantizes, "
                   "saves) and report its peak RSS (ru_maxrss); costs a torch import and a teacher load "
                   "per method.  Default: in-process, reporting the sampled peak RSS rise while quantizing")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write compare.md/.csv/.png (default: compare-<model name>; the PNG needs "
                   "the plot extra, pip install 'onebit[plot]')")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    check_paths_exist(args.model)  # before torch is imported
    from .. import compare as C
    from ..models import check_model_spec

    methods = C.parse_methods(args.methods)        # bad specs fail before any loading
    datasets = [d.strip() for d in args.data.split(",") if d.strip()]
    if not datasets:
        raise OneBitError("--data is empty")
    if args.max_windows is not None and args.max_windows < 1:
        raise OneBitError(f"--max-windows must be at least 1, got {args.max_windows}")
    if args.full and args.max_windows is not None:
        raise OneBitError("--full scores every window; do not also give --max-windows")
    max_windows = None if args.full else args.max_windows or C.DEFAULT_MAX_WINDOWS
    scope = ("perplexity and KL: all windows of each dataset (--full)" if args.full else
             f"perplexity and KL: at most {max_windows} windows per dataset"
             + ("" if args.max_windows else " (the default; --full scores the whole sets)"))
    zs = (f"zero-shot: the first {args.zeroshot_limit} items of each task, accuracy % +- standard error"
          if args.zeroshot_limit
          else "zero-shot: not scored (--zeroshot-limit N)")
    if args.zeroshot_limit < 0:
        raise OneBitError(f"--zeroshot-limit must be >= 0, got {args.zeroshot_limit}")
    if args.distill < 0:
        raise OneBitError(f"--distill must be >= 0, got {args.distill}")
    check_model_spec(args.model)
    out = Path(args.out or f"compare-{Path(args.model.rstrip('/')).name}")
    if out.exists() and not out.is_dir():
        raise OneBitError(f"--out '{out}' exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    from ..registry import get_handler

    calibrated = [lbl for lbl, c in methods if c is not None and (args.distill or get_handler(c).needs_calibration)]
    note = (f"\nModel: {args.model}; data: {', '.join(datasets)}; {scope}; KLD and top-1 agreement with "
            f"the teacher on the {datasets[0]} windows; {zs}; "
            + (f"calibration (for {', '.join(calibrated)}): {args.calib_samples} teacher samples x "
               f"{args.calib_seqlen} tokens" if calibrated else "no calibration data (no method needs it)")
            + (f"; distilled {args.distill} steps" if args.distill else "")
            + "; quant s: the quantization alone (not loading the model, not the shared calibration data)"
            + ("; peak RSS: ru_maxrss of a fresh child process that loaded the teacher, quantized and saved"
               if args.isolate else "; quant RSS rise: peak RSS while quantizing (sampled every 20 ms) "
               "minus the RSS before, in the comparing process")
            + ".\n")
    done: list = []
    title = f"{Path(args.model).name}: perplexity vs bits per weight"

    def write(rows, partial: bool) -> None:
        left = [lbl for lbl, _ in methods[len(rows):]]
        tail = f"\nPartial: {len(rows)} of {len(methods)} methods done; to come: {', '.join(left)}.\n" \
            if partial and left else ""
        write_text_atomic(out / "compare.md", C.to_markdown(rows, args.isolate) + note + tail)
        write_text_atomic(out / "compare.csv", C.to_csv(rows, args.isolate))
        if partial:  # the plot of the rows so far (the final one below says when it cannot be drawn)
            C.plot(rows, out / "ppl_vs_bits.png", title=title)

    def on_row(r):
        log.info("%s: %.3f bits/weight (%.3f end to end), %s", r.method, r.bits_per_weight, r.bits_end_to_end,
                 ", ".join(f"ppl {d} {v:.3f}" for d, v in r.ppl.items()))
        done.append(r)
        write(done, partial=True)

    log.info("%s; %s", scope, zs)
    rows = C.run_compare(args.model, methods, datasets, args.seqlen or None, max_windows, args.calib_samples,
                         args.calib_seqlen, args.distill, args.zeroshot_limit, progress_enabled(args), on_row,
                         isolate=args.isolate)
    write(rows, partial=False)
    md = C.to_markdown(rows, args.isolate)
    png = out / "ppl_vs_bits.png"
    wrote = [out / "compare.md", out / "compare.csv"]
    if C.plot(rows, png, title=title):
        wrote.append(png)
    else:
        print(f"onebit: note: {C.NO_PLOT_NOTE.format(name=png)}", file=sys.stderr)
    sys.stdout.write(md)
    print(f"{scope}; {zs}")
    print(f"wrote {', '.join(map(str, wrote))}")
    return 0
