"""WikiText-2 perplexity against wall time for the SmolLM2-135M conversions of issue 17, read from
their logs in ``bench/results/blockwise_smollm2/`` (nothing here is typed in by hand).

    python bench/smollm2_curve.py [--dir bench/results/blockwise_smollm2] [--png curve.png] [--csv curve.csv]

Each recipe is a line through its finished checkpoints.  A point's time counts everything before it:
the teacher data (the generation time in the log that generated data of that shape; zero where
the stage's own log generated it, since its wall time then includes it) plus the wall time of every
stage up to that checkpoint (``/usr/bin/time -v`` in the stage's log).  Its perplexity is the
``onebit eval ppl MODEL --data wikitext2 --seqlen 2048 --max-windows 8`` line of the named
evaluation log (``eval.sh``).  Dashed: the teacher, and the issue's bar (3× the teacher).
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

#: (label, log that generated this shape of teacher data, [(stage log, model, evaluation log), ...])
RECIPES = [
    ("OneBit foldable, rows of 256 (run2 settings)", "run7_q1_0-rot.log",
     [("run12_fold-bw-base.log", "out/smol/fold-bw-base", "eval14_concat.log")]),
    ("OneBit foldable, 4 sequences per row, + 100 KD steps", "run7_q1_0-rot.log",
     [("run12_fold-bw-cat4.log", "out/smol/fold-bw-cat4", "eval14_concat.log"),
      ("run13_cat4_kd.log", "out/smol/fold-bw-cat4-kd", "eval14_concat.log")]),
    ("OneBit foldable, 8 sequences per row, + 40 KD steps", "run7_q1_0-rot.log",
     [("run12_fold-bw-cat8.log", "out/smol/fold-bw-cat8", "eval15_cat8.log"),
      ("run15_cat8_kd.log", "out/smol/fold-bw-cat8-kd", "eval17_cat8_kd.log")]),
    ("Q1_0-native, + 100 KD steps", "run7_q1_0-rot.log",
     [("run7_q1_0.log", "out/smol/q1_0-bw", "eval10_equal3.log"),
      ("run10_q1_0_kd.log", "out/smol/q1_0-bw-kd", "eval10_q1_0_kd.log")]),
    ("OneBit rank-2, 1024 sequences, + 180 KD steps", "run8_rank_1024.log",
     [("run8_rank_1024.log", "out/smol/rank-bw-1024", "eval8.log"),
      ("run9_rank_1024_kd.log", "out/smol/rank-bw-1024-kd", "eval9_with_teacher.log")]),
    ("OneBit rank-2, 1024 sequences, 8 per row, + 60 KD steps", "run8_rank_1024.log",
     [("run14_rank-bw-1024-cat8.log", "out/smol/rank-bw-1024-cat8", "eval16_rank_cat8.log"),
      ("run14_rank-bw-1024-cat8-kd.log", "out/smol/rank-bw-1024-cat8-kd", "eval16_rank_cat8.log")]),
    ("the same, + 50 KD steps instead (a slower VM that hour)", "run8_rank_1024.log",
     [("run14_rank-bw-1024-cat8.log", "out/smol/rank-bw-1024-cat8", "eval16_rank_cat8.log"),
      ("run16_rank_cat8_kd50.log", "out/smol/rank-bw-1024-cat8-kd50", "eval18_rank_cat8_kd50.log")]),
    ("the same blocks, + 80 KD steps under --bf16 --compile", "run8_rank_1024.log",
     [("run14_rank-bw-1024-cat8.log", "out/smol/rank-bw-1024-cat8", "eval16_rank_cat8.log"),
      ("run18_rank-bw-1024-cat8-kdbf16.log", "out/smol/rank-bw-1024-cat8-kdbf16", "eval20_rank_cat8_kd_bf16.log")]),
    ("the same blocks, + 110 KD steps under --bf16 --compile", "run8_rank_1024.log",
     [("run14_rank-bw-1024-cat8.log", "out/smol/rank-bw-1024-cat8", "eval16_rank_cat8.log"),
      ("run18_rank-bw-1024-cat8-kdbf16-110.log", "out/smol/rank-bw-1024-cat8-kdbf16-110",
       "eval21_rank_cat8_kd_bf16_110.log")]),
    ("one command, --budget 90: blocks under --block-bf16, KD steps fitted (88; Zen 4 VM)", "run19_one-command.log",
     [("run19_one-command.log", "out/smol/one-command", "eval22_one_command.log")]),
    ("rank-2, 8 per row, blocks under --block-bf16 --compile", "run8_rank_1024.log",
     [("run17_rank-bw-1024-cat8-bf16.log", "out/smol/rank-bw-1024-cat8-bf16", "eval19_block_bf16.log")]),
    ("ternary (2 bits), block-wise", "run7_q1_0-rot.log",
     [("run5_ternary.log", "out/smol/ternary-bw", "eval56.log")]),
    ("GPTQ-W2-g64 (2.25 bits) + 120 KD steps", "run7_q1_0-rot.log",
     [("run6_gptq_w2_kd.log", "out/smol/gptq-w2-kd", "eval56.log")]),
]
TEACHER = ("../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", "eval9_with_teacher.log")


def _seconds(text: str) -> float:
    """``1h02m03s`` / ``2m05s`` / ``52s`` (progress lines) or ``h:mm:ss`` / ``m:ss.ss`` (time -v)."""
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not m or not text:
        raise ValueError(f"not a duration: {text!r}")
    h, mi, s = (int(g or 0) for g in m.groups())
    return 3600 * h + 60 * mi + s


def wall_seconds(log: str) -> float:
    """The wall time ``/usr/bin/time -v`` printed at the end of a stage's log."""
    m = re.findall(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", log)
    if not m:
        raise ValueError("no '/usr/bin/time -v' wall time in the log")
    return _seconds(m[-1])


def generated_here(log: str) -> bool:
    return "teacher data: generated" in log


def data_seconds(log: str) -> float:
    """How long the teacher data took in the log that generated it (its last progress line)."""
    m = re.findall(r"teacher data: \d+/\d+ \(100%\), (\w+) elapsed", log)
    if not m or not generated_here(log):
        raise ValueError("the log did not generate teacher data")
    return _seconds(m[-1])


def wikitext_ppl(log: str, model: str) -> float:
    """The WikiText-2 perplexity of ``model`` in an ``eval.sh`` log: the ``wikitext2: ppl`` line
    after ``== MODEL wikitext2``, or after a ``# ... eval.sh MODEL ...`` comment naming one model."""
    current = None
    for line in log.splitlines():
        if line.startswith("== "):
            current = line.split()[1]
        elif line.startswith("#") and "eval.sh" in line:
            args = line.split("eval.sh", 1)[1].split("(")[0].split()
            current = args[0] if len(args) == 1 else None
        elif line.startswith("wikitext2: ppl") and current == model:
            return float(line.split()[2])
    raise ValueError(f"no WikiText-2 perplexity of {model}")


def points(root: Path) -> list[dict]:
    rows = []
    for label, data_log, stages in RECIPES:
        logs = [(root / s).read_text() for s, _, _ in stages]
        t = 0.0 if generated_here(logs[0]) else data_seconds((root / data_log).read_text())
        for (stage, model, ev), text in zip(stages, logs):
            t += wall_seconds(text)
            rows.append({"recipe": label, "checkpoint": model, "minutes": round(t / 60, 2),
                         "wikitext2_ppl": wikitext_ppl((root / ev).read_text(), model),
                         "stage_log": stage, "eval_log": ev})
    return rows


def plot(rows: list[dict], teacher: float, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label in dict.fromkeys(r["recipe"] for r in rows):
        pts = [r for r in rows if r["recipe"] == label]
        ax.plot([r["minutes"] for r in pts], [r["wikitext2_ppl"] for r in pts], "o-", label=label)
    ax.axhline(teacher, ls="--", c="k", lw=1, label=f"teacher {teacher:.1f}")
    ax.axhline(3 * teacher, ls=":", c="r", lw=1, label=f"the bar: 3x the teacher ({3 * teacher:.1f})")
    ax.axvline(90, ls=":", c="gray", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("wall minutes on the 2-core CPU, everything counted (teacher data + stages)")
    ax.set_ylabel("WikiText-2 perplexity (8 x 2048 tokens)")
    ax.set_title("SmolLM2-135M to ~1 bit on a 2-core CPU (issue 17)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("bench/results/blockwise_smollm2"))
    p.add_argument("--png", type=Path, help="default: DIR/curve.png")
    p.add_argument("--csv", type=Path, help="default: DIR/curve.csv")
    a = p.parse_args(argv)
    try:
        rows = points(a.dir)
        teacher = wikitext_ppl((a.dir / TEACHER[1]).read_text(), TEACHER[0])
    except (OSError, ValueError) as e:
        print(f"smollm2_curve: error: {e}", file=sys.stderr)
        return 2
    print(f"teacher: WikiText-2 {teacher:.2f}; the bar (3x): {3 * teacher:.2f}")
    for r in rows:
        print(f"{r['minutes']:7.1f} min  {r['wikitext2_ppl']:9.1f} ({r['wikitext2_ppl'] / teacher:5.1f}x)  "
              f"{r['checkpoint']}  [{r['recipe']}]")
    out_csv = a.csv or a.dir / "curve.csv"
    with open(out_csv.with_name(out_csv.name + ".tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out_csv.with_name(out_csv.name + ".tmp").replace(out_csv)
    plot(rows, teacher, a.png or a.dir / "curve.png")
    print(f"wrote {out_csv} and {a.png or a.dir / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
