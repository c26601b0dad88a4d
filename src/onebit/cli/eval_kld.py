"""``onebit eval kld`` (a student against its teacher) and ``onebit eval all`` (everything, one report)."""
from __future__ import annotations

from ..config import parse_dtype
from ..errors import OneBitError
from .common import (
    EVAL_DTYPE_HELP, add_common, add_dtype_arg, progress_enabled, write_json_atomic, write_text_atomic)
from .eval import _add_task_args, _add_threads, _add_window_args, _load, _seqlen, _task_files, add_seqlen_arg


def register_kld(esub) -> None:
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
    from ..eval.kld import dataset_kld
    from ..models import load_model

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


def register_all(esub) -> None:
    p = esub.add_parser(
        "all", help="perplexity + zero-shot (+ KLD with --teacher) into one JSON and Markdown summary",
        description="Run perplexity (--ppl-data), the zero-shot tasks and, with --teacher, KLD against "
        "the teacher; print each result and write OUT.json and OUT.md (atomically).")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--teacher", default=None, help="fp model to compare against (KLD, top-1 agreement)")
    p.add_argument("--ppl-data", default="wikitext2",
                   help="comma-separated perplexity texts (default: %(default)s)")
    p.add_argument("--kld-data", default="wikitext2", help="text for KLD (default: %(default)s)")
    add_seqlen_arg(p)
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
    from ..eval.report import run_all, to_markdown
    from ..eval.tasks import parse_tasks
    from ..models import load_model

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
