"""Evaluation texts by name, read from local files (``../shared/data``) or the hub.

Names:

* ``wikitext2``: WikiText-2 **raw** test split.  Rows as the HF dataset
  ``wikitext-2-raw-v1`` has them (each non-blank line + "\\n", blank lines as
  ""), joined with "\\n\\n" — the GPTQ/OneBit convention.
* ``c4``: GPTQ's "c4-new" convention over the C4 validation sample: the
  first 1100 documents joined with " " (the caller truncates to 256 windows).
* ``tinystories``: the TinyStories validation sample as one text stream.
* any other value: a UTF-8 text file, used as is.

These are **evaluation** files: :func:`is_evaluation_file` lets training and
calibration code refuse them.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from ..errors import OneBitError
from ..models import shared_dir

EVAL_FILES = {
    "wikitext2": "wikitext2/wiki.test.raw",
    "c4": "c4/c4_validation_sample.json.gz",
    "tinystories": "tinystories/tinystories_val_sample.txt",
}
#: every file in ../shared/data that is evaluation data (never train/calibrate on these)
EVAL_RELPATHS = tuple(EVAL_FILES.values()) + (
    "wikitext2/wiki.valid.raw", "piqa/valid.jsonl", "arc/arc_easy.jsonl", "arc/arc_challenge.jsonl",
    "boolq/boolq.jsonl", "winogrande/winogrande.jsonl", "lambada/lambada_openai.jsonl",
    "hellaswag/hellaswag_val.jsonl.gz")
#: windows GPTQ's c4-new evaluation uses
C4_WINDOWS = 256


def data_dir() -> Path | None:
    env = os.environ.get("ONEBIT_DATA")
    if env:
        return Path(env)
    sd = shared_dir()
    return sd / "data" if sd is not None else None


def _local(rel: str) -> Path | None:
    d = data_dir()
    if d is not None and (d / rel).is_file():
        return d / rel
    return None


def wikitext2_rows(raw: str) -> list[str]:
    return [line + "\n" if line.strip() else "" for line in raw.split("\n")]


def _wikitext2() -> str:
    p = _local(EVAL_FILES["wikitext2"])
    if p is not None:
        rows = wikitext2_rows(p.read_text(encoding="utf-8"))
        if rows and rows[-1] == "":  # the file's final newline is not a row
            rows.pop()
        return "\n\n".join(rows)
    return "\n\n".join(_hub_rows("wikitext", "wikitext-2-raw-v1", "test"))


def _c4() -> str:
    p = _local(EVAL_FILES["c4"])
    if p is not None:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            docs = [json.loads(line)["text"] for line in f if line.strip()]
    else:
        docs = _hub_rows("allenai/c4", None, "validation",
                         data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"})
    return " ".join(docs[:1100])


def _hub_rows(name, subset, split, **kw) -> list[str]:
    try:
        import datasets  # optional
    except ImportError:
        raise OneBitError(f"dataset '{name}' not found locally (set ONEBIT_DATA or pass a text file); "
                          "install 'datasets' to download it")
    try:
        ds = datasets.load_dataset(name, subset, split=split, **kw)
    except Exception as e:
        raise OneBitError(f"cannot download dataset '{name}': {str(e).splitlines()[0]}")
    return list(ds["text"])


def load_text(name_or_file: str) -> str:
    """The evaluation text for a dataset name or a text file path."""
    if name_or_file == "wikitext2":
        return _wikitext2()
    if name_or_file == "c4":
        return _c4()
    if name_or_file == "tinystories":
        p = _local(EVAL_FILES["tinystories"])
        if p is None:
            raise OneBitError("TinyStories sample not found (set ONEBIT_DATA or pass a text file)")
        return p.read_text(encoding="utf-8")
    p = Path(name_or_file).expanduser()
    if not p.exists():
        raise OneBitError(f"unknown dataset or missing file '{name_or_file}' "
                          "(datasets: wikitext2, c4, tinystories; or a text file)")
    if not p.is_file():
        raise OneBitError(f"'{name_or_file}' is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OneBitError(f"'{name_or_file}' is not UTF-8 text")
    if not text.strip():
        raise OneBitError(f"'{name_or_file}' is empty")
    return text


def is_evaluation_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is one of the known evaluation files (by location or content)."""
    p = Path(path).expanduser()
    if not p.is_file():
        return False
    d = data_dir()
    rp = p.resolve()
    if d is not None:
        for rel in EVAL_RELPATHS:
            if (d / rel).is_file() and (d / rel).resolve() == rp:
                return True
    # a copy elsewhere: same name and same size as a known evaluation file
    if d is not None:
        for rel in EVAL_RELPATHS:
            q = d / rel
            if q.is_file() and q.name == p.name and q.stat().st_size == p.stat().st_size:
                return True
    return False
