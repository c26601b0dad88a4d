"""``onebit eval zeroshot`` and ``onebit eval harness``: the zero-shot tasks, ours and lm-eval's."""
from __future__ import annotations

from ..errors import OneBitError
from .common import EVAL_DTYPE_HELP, add_common, add_dtype_arg, progress_enabled, write_json_atomic
from .eval import _add_task_args, _add_threads, _load, _task_files


def register_zeroshot(esub) -> None:
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
    from ..eval.report import format_task
    from ..eval.tasks import load_task, parse_tasks
    from ..eval.zeroshot import evaluate_task, paper_average

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


def register_harness(esub) -> None:
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
    from ..eval.harness import require_lm_eval, run_harness

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
