"""Task readers on real lines of ../shared/data, with lm-eval's prompts; malformed input."""
import gzip
import json
from pathlib import Path

import pytest

from onebit.errors import OneBitError
from onebit.eval.tasks import TASK_FILES, TASKS, hellaswag_preprocess, load_task, parse_tasks


def _head(src: Path, dst: Path, n: int) -> Path:
    opener = gzip.open if src.name.endswith(".gz") else open
    with opener(src, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if dst.name.endswith(".gz") else open)(dst, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    return dst


@pytest.fixture
def small_dir(data_dir, tmp_path):
    """The first 3 lines of every real task file, in the shared layout."""
    for t, rel in TASK_FILES.items():
        _head(data_dir / rel, tmp_path / rel, 3)
    _head(data_dir / "piqa" / "valid-labels.lst", tmp_path / "piqa" / "valid-labels.lst", 3)
    return tmp_path


def test_piqa_prompt(small_dir):
    d = load_task("piqa", small_dir)
    assert len(d) == 3 and [x.gold for x in d] == [0, 1, 1]  # valid-labels.lst starts 0, 1, 1
    assert d[0].requests[0] == ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
                                " Provide the guinea pig with a cage full of a few inches of bedding made of "
                                "ripped paper strips, you will also need to supply it with a water bottle "
                                "and a food dish.")
    assert d[1].requests[1] == ("Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin ")
    assert d[1].choices == ["replace drawer with bobby pin ", "finish, woodgrain with  bobby pin "]


def test_arc_prompt(small_dir):
    d = load_task("arc_easy", small_dir)
    assert d[1].requests[1] == ("Question: Which piece of safety equipment is used to keep mold spores from "
                                "entering the respiratory system?\nAnswer:", " breathing mask")
    assert d[1].gold == 1 and len(d[1].requests) == 4
    c = load_task("arc_challenge", small_dir)
    assert c[0].gold == 2 and c[0].requests[2][1] == " Planetary days will become shorter."


def test_boolq_prompt_drops_passage_prefix(small_dir):
    d = load_task("boolq", small_dir)[0]
    ctx = d.requests[0][0]
    assert ctx.startswith("All biomass goes through at least some of these steps")
    assert ctx.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [c for _, c in d.requests] == [" no", " yes"] and d.gold == 0


def test_winogrande_partial(small_dir):
    d = load_task("winogrande", small_dir)[0]
    assert d.requests == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                          ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert d.gold == 1


def test_hellaswag_and_lambada(small_dir):
    h = load_task("hellaswag", small_dir)[0]
    assert h.requests[3] == ("Roof shingle removal: A man is sitting on a roof. he",
                             " starts pulling up roofing on a roof.") and h.gold == 3
    lam = load_task("lambada", small_dir)[0]
    assert lam.requests[0][0].endswith("I don't care about") and lam.requests[0][1] == " signs"
    assert lam.gold == -1


def test_hellaswag_preprocess_like_lm_eval():
    assert hellaswag_preprocess(" Hi [title] there [x] you ") == "Hi. there you"
    assert hellaswag_preprocess("a [x]  b") == "a  b"  # one pass of "  " -> " ", as lm-eval


def test_full_files_counts(data_dir):
    n = {t: len(load_task(t)) for t in TASKS}
    assert n == {"piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
                 "arc_challenge": 1172, "boolq": 3270, "lambada": 5153}
    assert len(load_task("piqa", limit=7)) == 7


def test_task_names():
    assert parse_tasks("PIQA, arc_e,lambada_openai,piqa") == ["piqa", "arc_easy", "lambada"]
    with pytest.raises(OneBitError, match="unknown task 'mmlu'"):
        parse_tasks("piqa,mmlu")


def test_malformed_file_names_file_and_line(tmp_path):
    f = tmp_path / "arc.jsonl"
    f.write_text('{"query": "Question: a?", "choices": ["x", "y"], "gold": 0}\n{"query": "b", "choices": [\n')
    with pytest.raises(OneBitError, match=rf"{f}:2: not valid JSON"):
        load_task("arc_easy", files={"arc_easy": f})
    f.write_text('{"query": "Question: a?", "choices": ["x", "y"], "gold": 5}\n')
    with pytest.raises(OneBitError, match=rf"{f}:1: gold 5 is out of range"):
        load_task("arc_easy", files={"arc_easy": f})
    f.write_text('{"query": "Question: a?", "gold": 0}\n')
    with pytest.raises(OneBitError, match=rf"{f}:1: missing field 'choices'"):
        load_task("arc_easy", files={"arc_easy": f})


def test_empty_missing_and_limit(tmp_path):
    f = tmp_path / "w.jsonl"
    f.write_text("\n\n")
    with pytest.raises(OneBitError, match="is empty"):
        load_task("winogrande", files={"winogrande": f})
    with pytest.raises(OneBitError, match="not found"):
        load_task("boolq", files={"boolq": tmp_path / "nope.jsonl"})
    f.write_text(json.dumps({"context_options": ["a", "b"], "continuation": "c", "gold": 0}) + "\n")
    with pytest.raises(OneBitError, match="--limit must be at least 1"):
        load_task("winogrande", files={"winogrande": f}, limit=0)


def test_piqa_labels_must_align(tmp_path, data_dir):
    _head(data_dir / "piqa" / "valid.jsonl", tmp_path / "mine.jsonl", 3)
    with pytest.raises(OneBitError, match="mine-labels.lst' not found"):
        load_task("piqa", files={"piqa": tmp_path / "mine.jsonl"})
    (tmp_path / "mine-labels.lst").write_text("0\n1\n")
    with pytest.raises(OneBitError, match="has 2 labels but"):
        load_task("piqa", files={"piqa": tmp_path / "mine.jsonl"})
    (tmp_path / "mine-labels.lst").write_text("0\n1\n7\n")
    with pytest.raises(OneBitError, match="mine-labels.lst:3: label should be 0 or 1"):
        load_task("piqa", files={"piqa": tmp_path / "mine.jsonl"})
