"""Bridge to lm-evaluation-harness (optional extra: ``pip install onebit[lmeval]``).

The in-memory model (fp or packed OneBit) is handed to lm-eval as
``HFLM(pretrained=model, tokenizer=tokenizer)``, so any lm-eval task runs on it.

Offline, the seven local tasks run from the local files: each file is
converted (by :func:`hf_rows`) back to the rows of the Hugging Face dataset
lm-eval's task expects (``goal/sol1/sol2/label`` for PIQA, ``question/choices/
answerKey`` for ARC, ...), written as JSON lines to a temporary directory, and
lm-eval's **own** task yaml is loaded with ``dataset_path: json`` and
``data_files`` pointing at it.  The prompts, tokenization and scoring are
therefore lm-eval's, not ours, which is what makes the comparison with
:mod:`onebit.eval.zeroshot` a real check.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import OneBitError
from .tasks import ALIASES, TASKS, _jsonl, piqa_labels_path, task_path

#: our task name -> lm-eval's
LMEVAL_NAMES = {"piqa": "piqa", "arc_easy": "arc_easy", "arc_challenge": "arc_challenge",
                "hellaswag": "hellaswag", "winogrande": "winogrande", "boolq": "boolq",
                "lambada": "lambada_openai"}


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise OneBitError("lm-evaluation-harness is not installed: pip install 'onebit[lmeval]'")
    return lm_eval


def _common_prefix(a: str, b: str) -> str:
    return os.path.commonprefix([a, b])


def hf_rows(task: str, path: Path) -> list[dict]:
    """The local file as rows of the HF dataset lm-eval's ``task`` reads."""
    rows = []
    if task == "piqa":
        labels = piqa_labels_path(path).read_text(encoding="utf-8").split()
        for (_, o), lab in zip(_jsonl(path), labels):
            rows.append({"goal": o["goal"], "sol1": o["sol1"], "sol2": o["sol2"], "label": int(lab)})
    elif task in ("arc_easy", "arc_challenge"):
        for i, o in _jsonl(path):
            q = o["query"][len("Question: "):] if o["query"].startswith("Question: ") else o["query"]
            keys = [chr(ord("A") + k) for k in range(len(o["choices"]))]
            rows.append({"id": str(i), "question": q, "choices": {"text": o["choices"], "label": keys},
                         "answerKey": keys[int(o["gold"])]})
    elif task == "boolq":
        for _, o in _jsonl(path):
            passage, _, question = o["query"].rpartition("\nQuestion: ")
            passage = passage[len("Passage: "):] if passage.startswith("Passage: ") else passage
            rows.append({"passage": passage, "question": question[:-1] if question.endswith("?") else question,
                         "label": int(o["gold"])})
    elif task == "hellaswag":
        for i, o in _jsonl(path):
            label, sep, ctx = o["ctx"].partition(": ")
            rows.append({"ind": i, "activity_label": label, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                         "endings": o["endings"], "label": str(o["label"]), "split": "val"})
    elif task == "winogrande":
        for i, o in _jsonl(path):
            a, b = o["context_options"][:2]
            pre = _common_prefix(a, b)
            if "_" in pre:
                raise OneBitError(f"{path}:{i}: a context with '_' cannot be given to lm-eval's winogrande")
            rows.append({"sentence": f"{pre}_ {o['continuation']}", "option1": a[len(pre):],
                         "option2": b[len(pre):], "answer": str(int(o["gold"]) + 1)})
    elif task == "lambada":
        for _, o in _jsonl(path):
            rows.append({"text": o["text"] if "text" in o else o["context"] + " " + o["continuation"]})
    else:
        raise OneBitError(f"no local data conversion for task '{task}'")
    return rows


#: where lm-eval keeps those tasks' yamls (relative to ``lm_eval/tasks``)
LMEVAL_YAMLS = {"piqa": "piqa/piqa.yaml", "arc_easy": "arc/arc_easy.yaml",
                "arc_challenge": "arc/arc_challenge.yaml", "hellaswag": "hellaswag/hellaswag.yaml",
                "winogrande": "winogrande/default.yaml", "boolq": "super_glue/boolq/default.yaml",
                "lambada": "lambada/lambada_openai.yaml"}


def _yaml_path(task: str) -> Path:
    """The yaml of lm-eval's task, without indexing all of lm-eval's ~14k task files (20+ s)."""
    import lm_eval.tasks

    p = Path(lm_eval.tasks.__file__).parent / LMEVAL_YAMLS[task]
    if p.is_file():
        return p
    from lm_eval.tasks import TaskManager

    entry = TaskManager().task_index.get(LMEVAL_NAMES[task])
    if entry is None or entry.yaml_path is None:
        raise OneBitError(f"lm-eval has no task '{LMEVAL_NAMES[task]}'")
    return Path(entry.yaml_path)


def local_task_config(task: str, data_file: Path) -> dict:
    """lm-eval's own config for ``task`` (yaml, includes and functions resolved) reading ``data_file``."""
    from lm_eval.tasks._yaml_loader import load_yaml

    name = LMEVAL_NAMES[task]
    cfg = dict(load_yaml(_yaml_path(task), resolve_func=True))
    for k in ("tag", "group", "include"):
        cfg.pop(k, None)
    cfg.update(task=name, dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {"test": str(data_file)},
                               "cache_dir": str(data_file.parent / "hf_cache")},
               training_split=None, validation_split=None, test_split="test", fewshot_split=None)
    return cfg


def run_harness(model, tokenizer, tasks: list[str], limit: int | None = None, batch_size: int = 32,
                data_dir=None, files: dict | None = None, local: bool = True, progress: bool = False) -> dict:
    """Run lm-eval on ``model``; returns ``{"results": {task: metrics}, "samples": {task: [...]}}``.

    Our seven tasks (``local=True``) run from the local files; any other lm-eval task name is passed
    through as is (lm-eval downloads its data: needs network or a filled HF cache).
    """
    require_lm_eval()
    if local:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    passthrough = [t for t in tasks if not (local and ALIASES.get(t, t) in TASKS)]
    # our local tasks are inline configs: no need to index lm-eval's whole task tree
    tm = TaskManager() if passthrough else TaskManager(include_defaults=False)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="onebit-lmeval-") as tmp:
        specs, names = [], {}
        for t in tasks:
            ours = ALIASES.get(t, t)
            if local and ours in TASKS:
                f = Path(tmp) / f"{ours}.jsonl"
                rows = hf_rows(ours, task_path(ours, data_dir, files))
                f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
                specs.append(local_task_config(ours, f))
                names[LMEVAL_NAMES[ours]] = ours
            else:
                specs.append(t)
                names[t] = t
        try:
            out = simple_evaluate(model=lm, tasks=specs, limit=limit, log_samples=True, task_manager=tm,
                                  bootstrap_iters=0, verbosity="ERROR")
        except (KeyError, ValueError, FileNotFoundError, ConnectionError) as e:
            raise OneBitError(f"lm-eval failed: {' '.join(str(e).split())[:300]}")
    results = {names.get(k, k): v for k, v in out["results"].items()}
    samples = {names.get(k, k): sorted(v, key=lambda s: s["doc_id"]) for k, v in out.get("samples", {}).items()}
    return {"results": results, "samples": samples}
