"""Zero-shot task files -> scoring requests, with lm-evaluation-harness's prompts.

Each reader turns one local file (the formats of ``../shared/data/SOURCES.md``,
or a user's own file in the same format) into :class:`Doc` objects: the
``(context, continuation)`` pairs to score, the gold index and the choice
strings lm-eval uses for ``acc_norm``.  The prompts are lm-eval's task yamls
(v0.4) rebuilt from the local fields, zero-shot, target delimiter ``" "``:

============== ============================================== ==================
task           context                                        continuations
============== ============================================== ==================
piqa           ``"Question: {goal}\\nAnswer:"``               ``" " + sol1/2``
arc_*          ``"Question: {question}\\nAnswer:"``           ``" " + choice``
hellaswag      ``preprocess(activity_label + ": " + ctx)``    ``" " + ending``
boolq          ``"{passage}\\nQuestion: {question}?\\nAnswer:"`` ``" no"``, ``" yes"``
winogrande     ``sentence[:blank] + option`` (one per option) ``" " + rest``
lambada        text without its last ``" "``-separated word   ``" " + last word``
============== ============================================== ==================

(llm-foundry's ARC query already holds ``"Question: "``; its BoolQ query is
``"Passage: {passage}\\nQuestion: {question}?"``, so ``"Passage: "`` is
dropped to get lm-eval's prompt.)
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OneBitError

#: the paper's six tasks (their mean accuracy is the headline number)
PAPER_TASKS = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq")
TASKS = PAPER_TASKS + ("lambada",)
ALIASES = {"lambada_openai": "lambada", "arc_e": "arc_easy", "arc_c": "arc_challenge",
           "arc-easy": "arc_easy", "arc-challenge": "arc_challenge"}
#: file of each task, relative to the data directory (``../shared/data`` layout)
TASK_FILES = {
    "piqa": "piqa/valid.jsonl",
    "hellaswag": "hellaswag/hellaswag_val.jsonl.gz",
    "winogrande": "winogrande/winogrande.jsonl",
    "arc_easy": "arc/arc_easy.jsonl",
    "arc_challenge": "arc/arc_challenge.jsonl",
    "boolq": "boolq/boolq.jsonl",
    "lambada": "lambada/lambada_openai.jsonl",
}
#: tasks that report acc_norm (lm-eval's metric_list)
NORM_TASKS = ("piqa", "hellaswag", "arc_easy", "arc_challenge")


@dataclass
class Doc:
    """One item: score every ``(context, continuation)`` in ``requests``."""

    requests: list[tuple[str, str]]
    gold: int  # index into requests; -1 for LAMBADA (a single request)
    choices: list[str] = field(default_factory=list)  # lm-eval's doc_to_choice (acc_norm lengths)


def canonical_task(name: str) -> str:
    n = name.strip().lower()
    n = ALIASES.get(n, n)
    if n not in TASKS:
        raise OneBitError(f"unknown task '{name}' (tasks: {', '.join(TASKS)})")
    return n


def parse_tasks(spec: str) -> list[str]:
    names = [canonical_task(t) for t in spec.split(",") if t.strip()]
    if not names:
        raise OneBitError("--tasks is empty")
    return list(dict.fromkeys(names))


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py::preprocess`` (the local file is already mostly cleaned)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _jsonl(path: Path):
    """(line number, object) for every non-blank line; one-line errors naming file and line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = list(f)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise OneBitError(f"cannot read task file '{path}': {e}")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise OneBitError(f"{path}:{i}: not valid JSON ({e.msg})")
        if not isinstance(obj, dict):
            raise OneBitError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        out.append((i, obj))
    if not out:
        raise OneBitError(f"task file '{path}' is empty")
    return out


def _get(obj, key, typ, path, line):
    if key not in obj:
        raise OneBitError(f"{path}:{line}: missing field '{key}'")
    v = obj[key]
    if typ is int and isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise OneBitError(f"{path}:{line}: field '{key}' should be {typ.__name__}, got {type(v).__name__}")
    if typ is list and not all(isinstance(x, str) for x in v):
        raise OneBitError(f"{path}:{line}: field '{key}' should be a list of strings")
    return v


def _gold(obj, key, n, path, line) -> int:
    g = _get(obj, key, int, path, line)
    if not 0 <= g < n:
        raise OneBitError(f"{path}:{line}: {key} {g} is out of range for {n} choices")
    return g


def _mc(context: str, choices: list[str], gold: int) -> Doc:
    return Doc([(context, " " + c) for c in choices], gold, list(choices))


def piqa_labels_path(path: Path) -> Path:
    """``valid.jsonl`` -> ``valid-labels.lst`` (the official PIQA layout)."""
    name = path.name
    for suf in (".jsonl.gz", ".jsonl", ".json"):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return path.with_name(name + "-labels.lst")


def read_piqa(path: Path, labels: Path | None = None) -> list[Doc]:
    labels = labels or piqa_labels_path(path)
    if not labels.is_file():
        raise OneBitError(f"PIQA labels file '{labels}' not found (one 0/1 per line, aligned with '{path}')")
    lab = [(i, s.strip()) for i, s in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1)
           if s.strip()]
    rows = _jsonl(path)
    if len(lab) != len(rows):
        raise OneBitError(f"'{labels}' has {len(lab)} labels but '{path}' has {len(rows)} items")
    docs = []
    for (line, obj), (li, s) in zip(rows, lab):
        if s not in ("0", "1"):
            raise OneBitError(f"{labels}:{li}: label should be 0 or 1, got '{s[:20]}'")
        goal = _get(obj, "goal", str, path, line)
        sols = [_get(obj, "sol1", str, path, line), _get(obj, "sol2", str, path, line)]
        docs.append(_mc(f"Question: {goal}\nAnswer:", sols, int(s)))
    return docs


def read_arc(path: Path) -> list[Doc]:
    docs = []
    for line, obj in _jsonl(path):
        q = _get(obj, "query", str, path, line)
        ch = _get(obj, "choices", list, path, line)
        if not q.startswith("Question: "):  # accept a bare question too
            q = "Question: " + q
        docs.append(_mc(q + "\nAnswer:", ch, _gold(obj, "gold", len(ch), path, line)))
    return docs


def read_boolq(path: Path) -> list[Doc]:
    docs = []
    for line, obj in _jsonl(path):
        q = _get(obj, "query", str, path, line)
        ch = _get(obj, "choices", list, path, line)
        if [c.strip().lower() for c in ch] != ["no", "yes"]:
            raise OneBitError(f"{path}:{line}: BoolQ choices should be [\"no\", \"yes\"], got {ch[:3]}")
        if q.startswith("Passage: "):
            q = q[len("Passage: "):]
        docs.append(_mc(q + "\nAnswer:", ["no", "yes"], _gold(obj, "gold", 2, path, line)))
    return docs


def read_winogrande(path: Path) -> list[Doc]:
    docs = []
    for line, obj in _jsonl(path):
        ctxs = _get(obj, "context_options", list, path, line)
        cont = _get(obj, "continuation", str, path, line)
        if len(ctxs) < 2:
            raise OneBitError(f"{path}:{line}: 'context_options' needs at least 2 options")
        g = _gold(obj, "gold", len(ctxs), path, line)
        docs.append(Doc([(c, " " + cont) for c in ctxs], g, list(ctxs)))
    return docs


def read_hellaswag(path: Path) -> list[Doc]:
    docs = []
    for line, obj in _jsonl(path):
        ctx = _get(obj, "ctx", str, path, line)
        ends = _get(obj, "endings", list, path, line)
        if not ends:
            raise OneBitError(f"{path}:{line}: 'endings' is empty")
        g = _gold(obj, "label", len(ends), path, line)
        docs.append(_mc(hellaswag_preprocess(ctx), [hellaswag_preprocess(e) for e in ends], g))
    return docs


def read_lambada(path: Path) -> list[Doc]:
    docs = []
    for line, obj in _jsonl(path):
        if "text" in obj and "context" not in obj:  # EleutherAI/lambada_openai rows
            text = _get(obj, "text", str, path, line)
            ctx, _, word = text.rpartition(" ")
        else:
            ctx = _get(obj, "context", str, path, line)
            word = _get(obj, "continuation", str, path, line)
        if not ctx or not word:
            raise OneBitError(f"{path}:{line}: LAMBADA item needs a context and a last word")
        docs.append(Doc([(ctx, " " + word)], -1, [word]))
    return docs


READERS = {"piqa": read_piqa, "arc_easy": read_arc, "arc_challenge": read_arc, "boolq": read_boolq,
           "winogrande": read_winogrande, "hellaswag": read_hellaswag, "lambada": read_lambada}


def task_path(task: str, data_dir: str | Path | None = None, files: dict | None = None) -> Path:
    """The file for ``task``: an explicit per-task file, else ``data_dir/<layout>``."""
    if files and task in files:
        p = Path(files[task]).expanduser()
    else:
        if data_dir is None:
            from .data import data_dir as default_dir

            data_dir = default_dir()
        if data_dir is None:
            raise OneBitError(f"no data directory for task '{task}' (pass --data-dir or --task-file)")
        p = Path(data_dir).expanduser() / TASK_FILES[task]
    if not p.exists():
        raise OneBitError(f"task file for '{task}' not found: '{p}'")
    if not p.is_file():
        raise OneBitError(f"task file for '{task}' is not a file: '{p}'")
    return p


def load_task(task: str, data_dir=None, files: dict | None = None, limit: int | None = None) -> list[Doc]:
    """The docs of ``task`` (first ``limit`` of them, as lm-eval's ``--limit``)."""
    task = canonical_task(task)
    if limit is not None and limit < 1:
        raise OneBitError(f"--limit must be at least 1, got {limit}")
    docs = READERS[task](task_path(task, data_dir, files))
    return docs[:limit] if limit is not None else docs
