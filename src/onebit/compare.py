"""``onebit compare``: every method on the same model, one table.

A *method spec* names a method and its settings in one token::

    fp                      the unquantized model (baseline row)
    onebit  onebit-w1a8  bitnet  ternary
    rtn-w4  rtn-w2-g64  rtn-w4-asym  rtn-w3-g128-mse  rtn-w4-a8  rtn-w4-tensor
    gptq-w3-g64  gptq-w4-actorder  gptq-w4-g128-static

Modifiers (each only where the method has the setting): ``w<N>`` weight bits, ``g<N>``
group size, ``tensor`` one scale per tensor, ``sym``/``asym``, ``mse`` (clip search),
``a<N>`` activation bits (``a0`` turns BitNet's int8 activations off), ``actorder``,
``static`` (GPTQ static groups).

For each spec: quantize a fresh copy of the model (timed; calibration data, generated once by
the teacher, is shared by all methods and not in the time), save the packed checkpoint to a
temporary directory (size on disk = its ``model.safetensors``), read the bit ledger (bits per
weight of the quantized linears), and measure perplexity on each dataset.  Extra columns come
from :data:`METRIC_HOOKS`: mean KL(teacher ‖ method) per token on the first dataset's windows
(``onebit.eval.kld``) and, with ``zeroshot_limit`` > 0, the average accuracy on the paper's six
zero-shot tasks (``onebit.eval.zeroshot``); ``n/a`` where not measured.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import QuantConfig
from .errors import OneBitError
from .fileio import chmod_umask

log = logging.getLogger("onebit")

BASELINE_NAMES = ("fp", "fp16", "fp32", "teacher")
DEFAULT_METHODS = "onebit,onebit-w1a8,bitnet,ternary,rtn-w2-g64,gptq-w2-g64,rtn-w3-g64,gptq-w3-g64,rtn-w4,gptq-w4"
#: perplexity / KL windows per dataset that ``onebit compare`` scores unless told ``--full``: enough
#: to rank methods, and an answer in minutes rather than an hour (WikiText-2 has ~600 windows of 512)
DEFAULT_MAX_WINDOWS = 40
MODIFIERS = "w<bits>, g<group>, tensor, sym, asym, mse, a<act-bits>, actorder, static"


# ------------------------------------------------------------------- spec parsing
def parse_method_spec(spec: str) -> QuantConfig | None:
    """A method spec (see module docstring) -> its config; ``None`` for the fp baseline."""
    from .registry import available_methods, get_handler_cls

    s = spec.strip().lower()
    if s in BASELINE_NAMES:
        return None
    names = sorted(available_methods(), key=len, reverse=True)
    method = next((n for n in names if s == n or s.startswith(n + "-")), None)
    if method is None:
        raise OneBitError(f"unknown method '{spec}'; valid methods: {', '.join(sorted(names))}, fp "
                          f"(with modifiers {MODIFIERS}, e.g. rtn-w4-g128, gptq-w3-g64, rtn-w4-asym)")
    cls = get_handler_cls(method).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    kw: dict = {}
    for tok in [t for t in s[len(method):].split("-") if t]:
        if tok[0] == "w" and tok[1:].isdigit():
            key, val = "bits", int(tok[1:])
        elif tok[0] == "g" and tok[1:].isdigit():
            key, val = "group_size", int(tok[1:])
        elif tok[0] == "a" and tok[1:].isdigit():
            key, val = "act_bits", int(tok[1:])
        elif tok == "tensor":
            key, val = "group_size", -1
        elif tok in ("sym", "asym"):
            key, val = "sym", tok == "sym"
        elif tok == "mse":
            key, val = "clip", "mse"
        elif tok in ("actorder", "ao"):
            key, val = "act_order", True
        elif tok == "static":
            key, val = "static_groups", True
        else:
            raise OneBitError(f"method spec '{spec}': unknown modifier '{tok}'; valid modifiers: {MODIFIERS}")
        if key not in fields:
            raise OneBitError(f"method spec '{spec}': '{tok}' does not apply to method '{method}'")
        kw[key] = val
    cfg = cls(**kw)
    try:
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise OneBitError(f"method spec '{spec}': {e}")
    except OneBitError as e:
        raise OneBitError(f"method spec '{spec}': {e}")
    return cfg


def parse_methods(specs: str) -> list[tuple[str, QuantConfig | None]]:
    out = [(s.strip(), parse_method_spec(s)) for s in specs.split(",") if s.strip()]
    if not out:
        raise OneBitError("--methods is empty")
    labels = [lbl for lbl, _ in out]
    dup = {lbl for lbl in labels if labels.count(lbl) > 1}
    if dup:
        raise OneBitError(f"--methods lists {sorted(dup)[0]} twice")
    return out


# ------------------------------------------------------------------- extra metric hooks
def _kl_hook(teacher, student, tokenizer, ids_by_data, settings) -> float | None:
    """Mean KL(teacher ‖ student) per token on the first dataset (``onebit.eval.kld``)."""
    from .eval.kld import kl_divergence

    if student is teacher:
        return 0.0
    ids = next(iter(ids_by_data.values()))
    return float(kl_divergence(teacher, student, ids, settings["seqlen"], settings["max_windows"]).mean_kld)


def _zeroshot_hook(teacher, student, tokenizer, ids_by_data, settings) -> float | None:
    """Average accuracy over the paper's six zero-shot tasks (``onebit.eval.zeroshot``), only with
    ``zeroshot_limit`` > 0 items per task (it is the slow column)."""
    if not settings.get("zeroshot_limit"):
        return None
    from .eval.tasks import PAPER_TASKS
    from .eval.zeroshot import evaluate, paper_average

    res = evaluate(student, tokenizer, list(PAPER_TASKS), limit=settings["zeroshot_limit"])
    return paper_average(res)


#: column -> fn(teacher, student, tokenizer, {data: ids}, settings) -> float | None ("n/a")
METRIC_HOOKS: dict[str, Callable] = {"kl_to_teacher": _kl_hook, "zeroshot_avg": _zeroshot_hook}


# ------------------------------------------------------------------- running
@dataclass
class Row:
    method: str
    bits_per_weight: float
    size_mib: float
    quant_seconds: float
    ppl: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float | None] = field(default_factory=dict)


def _distill(teacher, cfg: QuantConfig, steps: int, data: torch.Tensor, progress: bool):
    """Distil the method's trainable form for ``steps`` steps (``onebit.distill``'s trainer)."""
    from .distill.student import freeze, pack_student, student_from_teacher
    from .distill.trainer import TrainConfig, Trainer

    student, qc = student_from_teacher(teacher, cfg)
    trainable = freeze(student, qc["modules"])
    Trainer(teacher, student, data, TrainConfig(steps=steps, batch_size=min(8, data.shape[0])),
            trainable, progress=progress).train()
    return pack_student(student, qc)


def run_compare(model_spec: str, methods: list[tuple[str, QuantConfig | None]], datasets: list[str],
                seqlen: int | None = None, max_windows: int | None = None, calib_samples: int = 128,
                calib_seqlen: int = 256, distill: int = 0, zeroshot_limit: int = 0, progress: bool = False,
                on_row: Callable[[Row], None] | None = None) -> list[Row]:
    import torch  # here, not at the top: the CLI parser imports this module for its defaults

    from .api import quantize
    from .calibration import teacher_samples
    from .eval.data import C4_WINDOWS, load_text
    from .eval.perplexity import perplexity, tokenize_text
    from .formats.checkpoint import save_checkpoint, unique_state_dict
    from .formats.ledger import dtype_bits
    from .models import context_length, load_model, load_tokenizer
    from .registry import get_handler

    teacher = load_model(model_spec)
    tok = load_tokenizer(model_spec)
    seqlen = seqlen if seqlen is not None else context_length(teacher)
    ids_by_data = {d: tokenize_text(tok, load_text(d)) for d in datasets}
    settings = {"seqlen": seqlen, "max_windows": max_windows, "zeroshot_limit": zeroshot_limit}
    calib = None
    needs = [c for _, c in methods if c is not None and (get_handler(c).needs_calibration or distill)]
    if needs:
        t0 = time.perf_counter()
        calib = teacher_samples(teacher, calib_samples, min(calib_seqlen, context_length(teacher)), seed=0,
                                progress=progress)
        log.info("calibration data: %d teacher samples in %.1fs (shared, not in the times)",
                 calib.shape[0], time.perf_counter() - t0)
    rows = []
    for label, cfg in methods:
        if cfg is None:
            model, secs = teacher, 0.0
            sd = unique_state_dict(teacher)
            bits = sum(t.numel() * dtype_bits(t.dtype) for t in sd.values())
            lin = [m.weight for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
            bpw = float(dtype_bits(lin[0].dtype)) if lin else float("nan")
            size = bits / 8 / 2 ** 20
        else:
            t0 = time.perf_counter()
            if distill:
                model = _distill(teacher, copy.deepcopy(cfg), distill, calib, progress)
            else:
                model = quantize(copy.deepcopy(teacher), copy.deepcopy(cfg), progress=progress,
                                 calib_ids=calib, tokenizer=tok)
            secs = time.perf_counter() - t0
            with tempfile.TemporaryDirectory(prefix="onebit-compare-") as tmp:
                led = save_checkpoint(model, Path(tmp) / "ckpt")
                size = sum(f.stat().st_size for f in (Path(tmp) / "ckpt").glob("*.safetensors")) / 2 ** 20
            bpw = led.bits_per_linear_weight
        row = Row(label, bpw, size, secs)
        for d, ids in ids_by_data.items():
            mw = min(max_windows or C4_WINDOWS, C4_WINDOWS) if d == "c4" else max_windows
            row.ppl[d] = perplexity(model, ids, seqlen, mw, progress=progress, desc=f"{label} {d}").ppl
        for name, hook in METRIC_HOOKS.items():
            row.extra[name] = hook(teacher, model, tok, ids_by_data, settings)
        rows.append(row)
        if on_row:
            on_row(row)
        if model is not teacher:
            del model
    return rows


# ------------------------------------------------------------------- output
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: list[Row]) -> tuple[list[str], list[list]]:
    datasets = list(rows[0].ppl) if rows else []
    extras = list(rows[0].extra) if rows else []
    header = ["method", "bits/weight", "size MiB", *[f"ppl {d}" for d in datasets], "quant s", *extras]
    body = [[r.method, r.bits_per_weight, r.size_mib, *[r.ppl[d] for d in datasets], r.quant_seconds,
             *[r.extra[e] for e in extras]] for r in rows]
    return header, body


def to_markdown(rows: list[Row]) -> str:
    header, body = table(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for b in body:
        cells = [b[0], f"{b[1]:.3f}", f"{b[2]:.3f}"] + [_fmt(v) for v in b[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    header, body = table(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for b in body:
        w.writerow(["" if v is None else v for v in b])
    return buf.getvalue()


#: what ``onebit compare`` says when it cannot draw the plot
NO_PLOT_NOTE = "{name} not written: matplotlib is not installed (pip install 'onebit[plot]')"


def plot(rows: list[Row], path: str | os.PathLike, title: str = "") -> bool:
    """PNG of perplexity vs bits per weight (log scales where the range is wide).  Returns False,
    writing nothing, when matplotlib (the ``plot`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    datasets = list(rows[0].ppl) if rows else []
    for d in datasets:
        pts = [(r.bits_per_weight, r.ppl[d], r.method) for r in rows if math.isfinite(r.ppl[d])]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=d)
        for x, y, lbl in pts:
            ax.annotate(lbl, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ys = [r.ppl[d] for r in rows for d in datasets if math.isfinite(r.ppl[d])]
    xs = [r.bits_per_weight for r in rows if math.isfinite(r.bits_per_weight)]
    if ys and max(ys) / max(min(ys), 1e-9) > 10:
        ax.set_yscale("log")
    if xs and max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight (quantized linears, from the ledger)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "perplexity vs bits per weight")
    ax.grid(True, which="both", alpha=0.3)
    if datasets:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        chmod_umask(tmp)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True
