"""``onebit eval ...``: perplexity, zero-shot tasks, KLD to a teacher, lm-eval bridge, all at once.

Each evaluation is a sub-subcommand registered in ``EVALS``.
"""
from __future__ import annotations

import json

from .common import EVAL_DTYPE_HELP, add_dtype_arg, seqlen_type

EVALS = ["ppl", "zeroshot", "kld", "harness", "all"]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model or packed checkpoint",
                       description="Evaluate a model or packed checkpoint.")
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    esub.required = True
    for name in EVALS:
        globals()[f"register_{name}"](esub)


def register_ppl(esub) -> None:
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
    p.add_argument("--seqlen", type=seqlen_type, default=None,
                   help="window length in tokens, at least 2 (default: the model's context, capped at 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    add_dtype_arg(p, "float32", EVAL_DTYPE_HELP)
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
    seqlen = args.seqlen if args.seqlen is not None else context_length(model)
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
    from ..errors import OneBitError
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
    from ..config import parse_dtype
    from ..errors import OneBitError
    from ..models import load_model, load_tokenizer

    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise OneBitError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    return load_model(spec, dtype=parse_dtype(args.dtype)), load_tokenizer(spec)


def register_zeroshot(esub) -> None:
    from .main import add_common

    p = esub.add_parser(
        "zeroshot", help="zero-shot accuracy on PIQA, HellaSwag, WinoGrande, ARC, BoolQ, LAMBADA",
        description="Zero-shot accuracy scored as lm-evaluation-harness scores it: each choice's "
        "log-likelihood given lm-eval's prompt (target delimiter ' '); acc = argmax, acc_norm = argmax "
        "of loglik / length of the choice (PIQA, HellaSwag, ARC); WinoGrande by partial scoring; BoolQ "
        "as ' no'/' yes'; LAMBADA: greedy last-word accuracy and ppl = exp(-mean loglik). Also prints "
        "the mean acc of the paper's six tasks (all but LAMBADA). Contexts that do not fit the model's "
        "window are truncated from the left, with a warning.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    _add_task_args(p)
    p.add_argument("--batch-size", type=int, default=32, help="continuations per forward (default: %(default)s)")
    p.add_argument("--no-share", action="store_true",
                   help="run every context+continuation whole instead of sharing the context's pass")
    p.add_argument("--samples", action="store_true", help="also write per-item predictions to --json")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    add_dtype_arg(p, "float32", EVAL_DTYPE_HELP)
    add_common(p)
    _add_threads(p)
    p.set_defaults(func=run_zeroshot)


def run_zeroshot(args) -> int:
    from ..errors import OneBitError
    from ..eval.report import format_task
    from ..eval.tasks import load_task, parse_tasks
    from ..eval.zeroshot import evaluate_task, paper_average
    from .common import progress_enabled, write_json_atomic

    tasks = parse_tasks(args.tasks)
    if args.limit is not None and args.limit < 1:
        raise OneBitError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {args.batch_size}")
    files = _task_files(args)
    docs = {t: load_task(t, args.data_dir, files, args.limit) for t in tasks}
    model, tok = _load(args.model, args)
    results = {}
    for t, d in docs.items():
        results[t] = evaluate_task(model, tok, t, d, args.batch_size, not args.no_share, progress_enabled(args))
        print(f"{t}: {format_task(results[t])}")
    avg = paper_average(results)
    if avg is not None:
        print(f"average of the paper's six (acc): {100 * avg:.2f}")
    if args.json:
        write_json_atomic(args.json, {"model": args.model, "limit": args.limit,
                                      "zeroshot": {t: r.as_dict(args.samples) for t, r in results.items()},
                                      **({"average": avg} if avg is not None else {})})
    return 0


def _add_window_args(p, default_data="wikitext2") -> None:
    p.add_argument("--data", default=default_data,
                   help="wikitext2, c4, tinystories or a text file (default: %(default)s)")
    p.add_argument("--seqlen", type=seqlen_type, default=None,
                   help="window length in tokens, at least 2 (default: the model's context, capped at 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")


def _seqlen(args, model) -> int:
    from ..errors import OneBitError
    from ..models import context_length

    if args.max_windows is not None and args.max_windows < 1:
        raise OneBitError(f"--max-windows must be at least 1, got {args.max_windows}")
    seqlen = args.seqlen if args.seqlen is not None else context_length(model)
    if seqlen > context_length(model, cap=1 << 30):
        raise OneBitError(f"--seqlen {seqlen} exceeds the model's context {context_length(model, 1 << 30)}")
    return seqlen


def register_kld(esub) -> None:
    from .main import add_common

    p = esub.add_parser(
        "kld", help="KL divergence and top-1 agreement of a student with its teacher",
        description="Agreement of STUDENT with TEACHER, as llama.cpp's perplexity --kl-divergence "
        "reports it: mean KL(teacher || student) per token with its standard error and percentiles, "
        "the fraction of tokens where both pick the same top-1 token, Δp (student minus teacher "
        "probability of the actual token) and the perplexity of both, on the same windows as "
        "'onebit eval ppl'. Both models must share the tokenizer (TEACHER's is used).")
    p.add_argument("teacher", metavar="TEACHER")
    p.add_argument("student", metavar="STUDENT")
    _add_window_args(p)
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward (default: %(default)s)")
    p.add_argument("--second-half", action="store_true",
                   help="score only the second half of each window, as llama.cpp does")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    add_dtype_arg(p, "float32", EVAL_DTYPE_HELP)
    add_common(p)
    _add_threads(p)
    p.set_defaults(func=run_kld)


def run_kld(args) -> int:
    from ..errors import OneBitError
    from ..eval.kld import dataset_kld
    from ..models import load_model
    from ..config import parse_dtype
    from .common import progress_enabled, write_json_atomic

    if args.batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {args.batch_size}")
    teacher, tok = _load(args.teacher, args)
    student = load_model(args.student, dtype=parse_dtype(args.dtype))
    seqlen = _seqlen(args, teacher)
    r = dataset_kld(teacher, student, tok, args.data, seqlen, args.max_windows, args.batch_size,
                    progress_enabled(args), args.second_half)
    p = r.kld_percentiles
    print(f"{args.data}: {r.tokens} tokens in {r.windows} windows x {r.seqlen} ({r.seconds:.1f}s)")
    print(f"Mean PPL(teacher)  {r.ppl_teacher:.6f}\nMean PPL(student)  {r.ppl_student:.6f}\n"
          f"PPL ratio          {r.ppl_ratio:.6f}\nMean ln(PPL ratio) {r.mean_ln_ppl_ratio:.6f}\n"
          f"Cor(ln p)          {100 * r.cor_logprob:.2f}%\n"
          f"Mean KLD           {r.mean_kld:.6f} ± {r.kld_stderr:.6f}")
    for k in p:
        print(f"{k if k in ('max', 'min') else k + '%':>8} KLD     {p[k]:.6f}")
    print(f"Mean Δp            {100 * r.mean_delta_p:.3f}%\nRMS Δp             {100 * r.rms_delta_p:.3f}%\n"
          f"Same top p         {100 * r.top1_agreement:.3f}%")
    if args.json:
        write_json_atomic(args.json, {"teacher": args.teacher, "student": args.student, "data": args.data,
                                      "kld": r.as_dict()})
    return 0


def register_harness(esub) -> None:
    from .main import add_common

    p = esub.add_parser(
        "harness", help="run lm-evaluation-harness on the (packed) model in memory",
        description="Hand the in-memory model (fp or packed) to lm-evaluation-harness "
        "(HFLM(pretrained=model, tokenizer=...)); needs pip install 'onebit[lmeval]'. The seven local "
        "tasks run offline from the local files with lm-eval's own task configs (dataset_path: json); "
        "any other lm-eval task name is passed through (lm-eval then downloads its data).")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    _add_task_args(p)
    p.add_argument("--batch-size", type=int, default=32, help="lm-eval batch size (default: %(default)s)")
    p.add_argument("--hub-data", action="store_true",
                   help="let lm-eval download the data of our seven tasks too (default: local files)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write lm-eval's results as JSON")
    add_dtype_arg(p, "float32", EVAL_DTYPE_HELP)
    add_common(p)
    _add_threads(p)
    p.set_defaults(func=run_harness_cmd)


def run_harness_cmd(args) -> int:
    from ..errors import OneBitError
    from ..eval.harness import require_lm_eval, run_harness
    from ..eval.tasks import ALIASES, TASKS
    from .common import progress_enabled, write_json_atomic

    require_lm_eval()
    if args.limit is not None and args.limit < 1:
        raise OneBitError(f"--limit must be at least 1, got {args.limit}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise OneBitError("--tasks is empty")
    files = _task_files(args)
    model, tok = _load(args.model, args)
    out = run_harness(model, tok, tasks, args.limit, args.batch_size, args.data_dir, files,
                      local=not args.hub_data, progress=progress_enabled(args))
    for t, r in out["results"].items():
        metrics = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in r.items()
                            if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len")
        print(f"{t}: {metrics}")
    if args.json:
        write_json_atomic(args.json, {"model": args.model, "lm_eval": out["results"]})
    return 0


def register_all(esub) -> None:
    from .main import add_common

    p = esub.add_parser(
        "all", help="perplexity + zero-shot (+ KLD with --teacher) into one JSON and Markdown summary",
        description="Run perplexity (--ppl-data), the zero-shot tasks and, with --teacher, KLD against "
        "the teacher; print each result and write OUT.json and OUT.md (atomically).")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--teacher", default=None, help="fp model to compare against (KLD, top-1 agreement)")
    p.add_argument("--ppl-data", default="wikitext2",
                   help="comma-separated perplexity texts (default: %(default)s)")
    p.add_argument("--kld-data", default="wikitext2", help="text for KLD (default: %(default)s)")
    p.add_argument("--seqlen", type=seqlen_type, default=None,
                   help="window length in tokens, at least 2 (default: the model's context, capped at 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="at most this many windows (ppl and KLD)")
    _add_task_args(p)
    p.add_argument("--batch-size", type=int, default=32, help="zero-shot continuations per forward")
    p.add_argument("--out", required=True, metavar="OUT",
                   help="write OUT.json and OUT.md (a trailing .json/.md is dropped)")
    add_dtype_arg(p, "float32", EVAL_DTYPE_HELP)
    add_common(p)
    _add_threads(p)
    p.set_defaults(func=run_all_cmd)


def run_all_cmd(args) -> int:
    from ..errors import OneBitError
    from ..eval.report import run_all, to_markdown
    from ..eval.tasks import parse_tasks
    from ..models import load_model
    from ..config import parse_dtype
    from .common import progress_enabled, write_json_atomic, write_text_atomic

    tasks = parse_tasks(args.tasks) if args.tasks.strip() else []
    if args.limit is not None and args.limit < 1:
        raise OneBitError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = args.out[:-5] if args.out.endswith(".json") else args.out[:-3] if args.out.endswith(".md") else args.out
    model, tok = _load(args.model, args)
    teacher = load_model(args.teacher, dtype=parse_dtype(args.dtype)) if args.teacher else None
    seqlen = _seqlen(args, model)
    s = run_all(model, tok, model_name=args.model, teacher=teacher, teacher_name=args.teacher, tasks=tasks,
                ppl_data=[d for d in args.ppl_data.split(",") if d.strip()], kld_data=args.kld_data,
                seqlen=seqlen, max_windows=args.max_windows, limit=args.limit, batch_size=args.batch_size,
                data_dir=args.data_dir, files=_task_files(args), progress=progress_enabled(args))
    write_json_atomic(out + ".json", s)
    write_text_atomic(out + ".md", to_markdown(s))
    print(f"wrote {out}.json and {out}.md")
    return 0
