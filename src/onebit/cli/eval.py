"""``onebit eval ...``: perplexity, zero-shot tasks, KLD to a teacher, lm-eval bridge, all at once.

Each evaluation is a sub-subcommand registered in ``EVALS``: ``ppl`` and the helpers the others
share here, ``zeroshot`` and ``harness`` in ``eval_tasks``, ``kld`` and ``all`` in ``eval_kld``.
"""
from __future__ import annotations

import importlib

from ..config import parse_dtype
from ..errors import OneBitError
from .common import (
    EVAL_DTYPE_HELP, SEQLEN_HELP, add_common, add_dtype_arg, check_paths_exist, progress_enabled,
    seqlen_type, write_json_atomic)
from .kvflags import add_kv_args, kv_config

#: sub-subcommand -> the module (``onebit.cli.<module>``) with its ``register_<name>``
EVALS = {"ppl": "eval", "zeroshot": "eval_tasks", "kld": "eval_kld", "harness": "eval_tasks", "all": "eval_kld"}


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model or packed checkpoint",
                       description="Evaluate a model or packed checkpoint.")
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    esub.required = True
    for name, module in EVALS.items():
        mod = importlib.import_module(f"onebit.cli.{module}")
        getattr(mod, f"register_{name}")(esub)


def add_seqlen_arg(p) -> None:
    p.add_argument("--seqlen", type=seqlen_type, default=None,
                   help="window length in tokens; " + SEQLEN_HELP.replace("%(default)s", "the model's context"))


def register_ppl(esub) -> None:
    p = esub.add_parser(
        "ppl", help="perplexity by the GPTQ/OneBit convention",
        description="Perplexity by the GPTQ/OneBit convention: the text (WikiText-2 raw test rows "
        "joined with '\\n\\n'; C4: GPTQ's c4-new, 1100 validation documents joined with ' ', 256 "
        "windows; TinyStories sample; or any text file) is tokenized once and cut into "
        "non-overlapping windows of --seqlen tokens, the remainder dropped; ppl = exp(mean NLL).")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--data", action="append", default=None,
                   help="wikitext2, c4, tinystories or a text file; repeatable (default: wikitext2)")
    add_seqlen_arg(p)
    p.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    add_dtype_arg(p, "float32", EVAL_DTYPE_HELP)
    add_kv_args(p, chunk=True)
    add_common(p)
    p.set_defaults(func=run_ppl)


def run_ppl(args) -> int:
    check_paths_exist(args.model)  # before torch is imported
    from ..eval.perplexity import dataset_perplexity
    from ..models import load_model, load_tokenizer

    if args.batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {args.batch_size}")
    kv = kv_config(args)
    if args.kv_chunk is not None and args.kv_chunk < 1:
        raise OneBitError(f"--kv-chunk must be at least 1, got {args.kv_chunk}")
    if kv is not None and args.kv_chunk is None:
        raise OneBitError("--kv-cache needs --kv-chunk C in eval ppl (one forward over a window never "
                          "reads its cache back; C = 1 is token-by-token decoding)")
    model = load_model(args.model, dtype=parse_dtype(args.dtype))
    tok = load_tokenizer(args.model)
    seqlen = _seqlen(args, model)
    results = {}
    for data in args.data or ["wikitext2"]:
        r = dataset_perplexity(model, tok, data, seqlen, args.max_windows, args.batch_size,
                               progress_enabled(args), kv_cache=kv, kv_chunk=args.kv_chunk)
        results[data] = r.as_dict()
        print(f"{data}: ppl {r.ppl:.4f} ({r.windows} windows x {r.seqlen} tokens, {r.seconds:.1f}s)")
    if args.json:
        write_json_atomic(args.json, {"model": args.model, "perplexity": results})
    return 0


TASK_HELP = ("comma-separated: piqa, hellaswag, winogrande, arc_easy, arc_challenge, boolq, lambada "
             "(default: all seven)")


def _add_task_args(p) -> None:
    p.add_argument("--tasks", default=",".join(__import__("onebit.eval.tasks", fromlist=["TASKS"]).TASKS),
                   help=TASK_HELP)
    p.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    p.add_argument("--data-dir", default=None,
                   help="directory laid out as ../shared/data (piqa/valid.jsonl + valid-labels.lst, "
                   "arc/arc_easy.jsonl, ...; default: $ONEBIT_DATA or ../shared/data)")
    p.add_argument("--task-file", action="append", default=[], metavar="TASK=FILE",
                   help="a task's own file in the same format (repeatable), e.g. piqa=my.jsonl "
                   "(PIQA reads its labels from my-labels.lst)")


def _task_files(args) -> dict:
    from ..eval.tasks import canonical_task

    files = {}
    for spec in args.task_file:
        task, sep, path = spec.partition("=")
        if not sep or not path:
            raise OneBitError(f"--task-file expects TASK=FILE, got '{spec}'")
        files[canonical_task(task)] = path
    return files


def _add_threads(p) -> None:
    """``--threads`` for this command, unless the common flags already have one."""
    if "--threads" in p._option_string_actions:
        return
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; on a CPU busy with other jobs 1 can be much faster)")


def _load(spec, args):
    check_paths_exist(spec, getattr(args, "student", None), getattr(args, "teacher", None))
    from ..models import load_model, load_tokenizer

    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise OneBitError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    return load_model(spec, dtype=parse_dtype(args.dtype)), load_tokenizer(spec)


def _add_window_args(p, default_data="wikitext2") -> None:
    p.add_argument("--data", default=default_data,
                   help="wikitext2, c4, tinystories or a text file (default: %(default)s)")
    add_seqlen_arg(p)
    p.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")


def _seqlen(args, model) -> int:
    from ..models import context_length

    if args.max_windows is not None and args.max_windows < 1:
        raise OneBitError(f"--max-windows must be at least 1, got {args.max_windows}")
    seqlen = args.seqlen or context_length(model)  # 0 or omitted: the model's context
    if seqlen > context_length(model, cap=1 << 30):
        raise OneBitError(f"--seqlen {seqlen} exceeds the model's context {context_length(model, 1 << 30)}")
    return seqlen
