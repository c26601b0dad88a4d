"""Perplexity against wall time of a block-wise + end-to-end `onebit distill` run, from its state dir.

    python bench/blockwise_curve.py out/smol/onebit-bw.state --data-seconds 200 \
        --teacher-ppl 18.8 --out bench/results/blockwise_smollm2/curve

Reads ``STATE/blocks/blocks.json`` (per-block error and seconds) and
``STATE/history.json`` (the end-to-end stage's periodic ``--eval-data``
perplexity), puts both on one clock (teacher data + block-wise stage + end-to-end
training seconds; evaluation time is not counted) and writes ``OUT.csv``,
``OUT.png`` (needs matplotlib) and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("state", help="the run's --state-dir (OUT.state)")
    ap.add_argument("--data-seconds", type=float, default=0.0, help="seconds spent making the teacher data")
    ap.add_argument("--teacher-ppl", type=float, default=None, help="the teacher's ppl on the same windows")
    ap.add_argument("--out", required=True, help="output prefix (writes OUT.csv and OUT.png)")
    a = ap.parse_args()
    st = Path(a.state)
    blocks = json.loads((st / "blocks" / "blocks.json").read_text())["history"]
    hist = json.loads((st / "history.json").read_text()) if (st / "history.json").is_file() else []
    t_blocks = sum(b["seconds"] for b in blocks)
    rows = []
    t = a.data_seconds
    for b in blocks:
        t += b["seconds"]
        rows.append({"stage": "block", "step": b["block"], "seconds": round(t, 1), "ppl": "",
                     "block_err": b["err_final"]})
    for h in hist:
        if "ppl" in h:
            rows.append({"stage": "e2e", "step": h["step"], "seconds": round(a.data_seconds + t_blocks + h["wall"], 1),
                         "ppl": round(h["ppl"], 3), "block_err": ""})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"teacher data {a.data_seconds:.0f}s, block-wise {t_blocks:.0f}s ({len(blocks)} blocks)")
    for r in rows:
        if r["stage"] == "e2e":
            ratio = f"  {r['ppl'] / a.teacher_ppl:.2f}x teacher" if a.teacher_ppl else ""
            print(f"  {r['seconds'] / 60:6.1f} min  e2e step {r['step']:4d}  ppl {r['ppl']:.2f}{ratio}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
        return
    e2e = [r for r in rows if r["stage"] == "e2e"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["seconds"] / 60 for r in e2e], [r["ppl"] for r in e2e], "o-", label="student (e2e evals)")
    ax.axvline((a.data_seconds + t_blocks) / 60, color="grey", ls=":", label="block-wise stage ends")
    if a.teacher_ppl:
        ax.axhline(a.teacher_ppl, color="k", ls="--", label="teacher")
        ax.axhline(3 * a.teacher_ppl, color="r", ls="--", label="3x teacher")
    ax.set_yscale("log")
    ax.set_xlabel("minutes (data + block-wise + e2e training)")
    ax.set_ylabel("perplexity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}.png", dpi=120)
    print(f"wrote {out}.csv, {out}.png")


if __name__ == "__main__":
    main()
