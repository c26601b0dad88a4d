"""``onebit eval all``: perplexity, zero-shot and (with a teacher) KLD in one JSON + Markdown summary."""
from __future__ import annotations

import platform
import time

from .tasks import PAPER_TASKS


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run_all(model, tokenizer, *, model_name: str, teacher=None, teacher_name: str | None = None,
            tasks: list[str], ppl_data: list[str], kld_data: str, seqlen: int, max_windows: int | None,
            limit: int | None, batch_size: int, data_dir=None, files=None, progress: bool = False,
            echo=print) -> dict:
    """Run every evaluation on ``model`` (and against ``teacher``); returns the summary dict."""
    from .kld import dataset_kld
    from .perplexity import dataset_perplexity
    from .tasks import load_task
    from .zeroshot import evaluate_task, paper_average

    t0 = time.perf_counter()
    docs = {t: load_task(t, data_dir, files, limit) for t in tasks}  # bad task files fail before any work
    out: dict = {"model": model_name, "teacher": teacher_name, "machine": machine(),
                 "settings": {"seqlen": seqlen, "max_windows": max_windows, "limit": limit,
                              "batch_size": batch_size}, "perplexity": {}, "zeroshot": {}}
    for d in ppl_data:
        r = dataset_perplexity(model, tokenizer, d, seqlen, max_windows, 1, progress)
        out["perplexity"][d] = r.as_dict()
        echo(f"ppl {d}: {r.ppl:.4f} ({r.windows} windows x {r.seqlen})")
    results = {}
    for t, dl in docs.items():
        r = evaluate_task(model, tokenizer, t, dl, batch_size, True, progress)
        results[t] = r
        out["zeroshot"][t] = r.as_dict()
        echo(f"{t}: " + format_task(r))
    avg = paper_average(results)
    if avg is not None:
        out["zeroshot_average"] = avg
        echo(f"average of the paper's six (acc): {100 * avg:.2f}")
    if teacher is not None:
        k = dataset_kld(teacher, model, tokenizer, kld_data, seqlen, max_windows, 1, progress)
        out["kld"] = {"data": kld_data, **k.as_dict()}
        echo(f"kld {kld_data}: {k.summary()}")
    out["seconds"] = time.perf_counter() - t0
    return out


def format_task(r) -> str:
    s = f"acc {100 * r.acc:.2f} ± {100 * r.acc_stderr:.2f}"
    if r.acc_norm is not None:
        s += f", acc_norm {100 * r.acc_norm:.2f}"
    if r.ppl is not None:
        s += f", ppl {r.ppl:.2f}"
    return s + f" (n={r.n}, {r.seconds:.1f}s)"


def to_markdown(s: dict) -> str:
    lines = [f"# onebit evaluation: `{s['model']}`", ""]
    if s.get("teacher"):
        lines += [f"Teacher: `{s['teacher']}`", ""]
    st = s["settings"]
    lines += [f"Machine: {s['machine']}. Settings: seqlen {st['seqlen']}, max windows {st['max_windows']}, "
              f"zero-shot limit {st['limit']}, batch size {st['batch_size']}. Total {s['seconds']:.0f} s.", ""]
    if s["perplexity"]:
        lines += ["## Perplexity", "", "| data | ppl | windows × seqlen |", "|---|---:|---|"]
        for d, r in s["perplexity"].items():
            lines.append(f"| {d} | {r['ppl']:.4f} | {r['windows']} × {r['seqlen']} |")
        lines.append("")
    if s["zeroshot"]:
        lines += ["## Zero-shot (lm-eval scoring)", "", "| task | n | acc | acc_norm | ppl |", "|---|---:|---:|---:|---:|"]
        for t, r in s["zeroshot"].items():
            norm = f"{100 * r['acc_norm']:.2f}" if r.get("acc_norm") is not None else ""
            ppl = f"{r['ppl']:.2f}" if r.get("ppl") is not None else ""
            lines.append(f"| {t} | {r['n']} | {100 * r['acc']:.2f} ± {100 * r['acc_stderr']:.2f} | {norm} | {ppl} |")
        if "zeroshot_average" in s:
            lines.append(f"| **average ({', '.join(PAPER_TASKS)})** | | **{100 * s['zeroshot_average']:.2f}** | | |")
        lines.append("")
    if "kld" in s:
        k = s["kld"]
        p = k["kld_percentiles"]
        lines += [f"## Agreement with the teacher ({k['data']}, {k['tokens']} tokens)", "",
                  "| metric | value |", "|---|---:|",
                  f"| mean KL(teacher ‖ student) | {k['mean_kld']:.6f} ± {k['kld_stderr']:.6f} |",
                  f"| KLD 99th percentile | {p['99.0']:.6f} |", f"| KLD median | {p['50.0']:.6f} |",
                  f"| KLD max | {p['max']:.6f} |", f"| same top-1 token | {100 * k['top1_agreement']:.3f}% |",
                  f"| ppl teacher / student | {k['ppl_teacher']:.4f} / {k['ppl_student']:.4f} |",
                  f"| RMS Δp | {100 * k['rms_delta_p']:.3f}% |", ""]
    return "\n".join(lines)
