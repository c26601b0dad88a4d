"""The report of ``onebit compare``: its rows, the Markdown and CSV tables and the plot of
perplexity against bits per weight (``onebit.compare`` runs the methods and fills the rows)."""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field

from .fileio import atomic_write

#: suffix of a standard-error column
SE = "_se"


@dataclass
class Row:
    method: str
    bits_per_weight: float          # quantized linears (ledger)
    size_mib: float
    quant_seconds: float
    ppl: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float | None] = field(default_factory=dict)
    bits_end_to_end: float = float("nan")     # every stored bit over the original model's weights
    #: ``isolate``: peak RSS of the child process that loaded the teacher, quantized and saved;
    #: in-process: the sampled peak RSS rise during the quantization (:class:`RSSSampler`)
    peak_rss_mib: float | None = None


# ------------------------------------------------------------------- output
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


#: printed names of the extra columns (others print as their key)
COLUMN_NAMES = {"kl_to_teacher": "KLD", "top1_agreement": "top-1 %", "zeroshot_avg": "avg of six",
                "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "piqa": "PIQA", "hellaswag": "HellaSwag",
                "winogrande": "WinoGrande", "boolq": "BoolQ", "lambada": "LAMBADA"}


def _extra_columns(rows: list[Row]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r.extra:
            if k not in cols:
                cols.append(k)
    return cols


#: the RSS column's name: a child's peak (``isolate``) or the in-process peak rise
RSS_LABELS = {True: "peak RSS MiB", False: "quant RSS rise MiB"}


def table(rows: list[Row], isolate: bool = False) -> tuple[list[str], list[list]]:
    """Header and body for the CSV: one column per value (standard errors as ``<column>_se``)."""
    datasets = list(rows[0].ppl) if rows else []
    extras = _extra_columns(rows)
    header = ["method", "bits/weight", "bits/weight e2e", "size MiB", *[f"ppl {d}" for d in datasets],
              "quant s", RSS_LABELS[isolate], *extras]
    body = [[r.method, r.bits_per_weight, r.bits_end_to_end, r.size_mib, *[r.ppl[d] for d in datasets],
             r.quant_seconds, r.peak_rss_mib, *[r.extra.get(e) for e in extras]] for r in rows]
    return header, body


def to_markdown(rows: list[Row], isolate: bool = False) -> str:
    """The table with ``value ± se`` cells where a standard error was measured."""
    datasets = list(rows[0].ppl) if rows else []
    extras = [e for e in _extra_columns(rows) if not e.endswith(SE)]
    header = ["method", "bits/weight", "bits/weight e2e", "size MiB", *[f"ppl {d}" for d in datasets],
              *[COLUMN_NAMES.get(e, e) for e in extras], "quant s", RSS_LABELS[isolate]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [r.method, f"{r.bits_per_weight:.3f}", _fmt(r.bits_end_to_end) if math.isnan(r.bits_end_to_end)
                 else f"{r.bits_end_to_end:.3f}", f"{r.size_mib:.3f}", *[_fmt(r.ppl[d]) for d in datasets]]
        for e in extras:
            v, se = r.extra.get(e), r.extra.get(e + SE)
            if v is None or se is None:
                cells.append(_fmt(v))
            elif e == "kl_to_teacher":
                cells.append(f"{v:.4f} ± {se:.4f}")
            else:
                cells.append(f"{v:.1f} ± {se:.1f}")
        cells += [f"{r.quant_seconds:.1f}", "n/a" if r.peak_rss_mib is None else f"{r.peak_rss_mib:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], isolate: bool = False) -> str:
    header, body = table(rows, isolate)
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
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
    finally:
        plt.close(fig)
    return True
