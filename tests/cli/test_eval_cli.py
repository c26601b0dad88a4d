"""`onebit eval zeroshot|kld|all|harness` on stories260K; bad input is one line and exit 2."""
import json

import pytest

from onebit.cli.main import main


def _err(capsys):
    e = capsys.readouterr().err.strip().splitlines()
    return [x for x in e if x.startswith("onebit: error:")]


def test_zeroshot_json(stories260k, tmp_path, capsys):
    j = tmp_path / "z.json"
    assert main(["eval", "zeroshot", stories260k, "--tasks", "piqa,winogrande,lambada", "--limit", "4",
                 "--json", str(j), "--samples"]) == 0
    out = capsys.readouterr().out
    assert "piqa: acc" in out and "acc_norm" in out and "lambada: acc" in out and "ppl" in out
    r = json.loads(j.read_text())["zeroshot"]
    assert r["piqa"]["n"] == 4 and len(r["piqa"]["items"]) == 4 and "acc_norm" not in r["winogrande"]
    assert 0 <= r["piqa"]["acc"] <= 1 and r["lambada"]["ppl"] > 1


def test_user_task_file(stories260k, tmp_path, capsys):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"query": "Question: What do cats say?", "choices": ["meow", "moo"], "gold": 0}) + "\n")
    assert main(["eval", "zeroshot", stories260k, "--tasks", "arc_easy", "--task-file", f"arc_easy={f}"]) == 0
    out = capsys.readouterr().out
    assert "arc_easy: acc" in out and "(n=1," in out


@pytest.mark.parametrize("argv,msg", [
    (["--tasks", "piqa,mmlu"], "unknown task 'mmlu'"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--task-file", "piqa"], "--task-file expects TASK=FILE"),
])
def test_zeroshot_bad_flags(stories260k, capsys, argv, msg):
    assert main(["eval", "zeroshot", stories260k, *argv]) == 2
    err = _err(capsys)
    assert len(err) == 1 and msg in err[0]


def test_malformed_and_empty_task_file(stories260k, tmp_path, capsys):
    f = tmp_path / "b.jsonl"
    f.write_text('{"query": "Passage: p\\nQuestion: q?", "choices": ["no", "yes"], "gold": 1}\n{oops\n')
    assert main(["eval", "zeroshot", stories260k, "--tasks", "boolq", "--task-file", f"boolq={f}"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and f"{f}:2: not valid JSON" in err[0]
    f.write_text("")
    assert main(["eval", "zeroshot", stories260k, "--tasks", "boolq", "--task-file", f"boolq={f}"]) == 2
    assert "is empty" in _err(capsys)[0]


def test_kld_self_is_zero(stories260k, tmp_path, capsys):
    j = tmp_path / "k.json"
    assert main(["eval", "kld", stories260k, stories260k, "--data", "tinystories", "--seqlen", "64",
                 "--max-windows", "2", "--json", str(j)]) == 0
    out = capsys.readouterr().out
    assert "Same top p         100.000%" in out and "Mean KLD" in out
    k = json.loads(j.read_text())["kld"]
    assert abs(k["mean_kld"]) < 1e-6 and k["top1_agreement"] == 1.0 and k["tokens"] == 2 * 63
    assert main(["eval", "kld", stories260k, str(tmp_path / "nope"), "--max-windows", "1"]) == 2
    assert "does not exist" in _err(capsys)[0]


def test_eval_all(stories260k, tmp_path, capsys):
    out = tmp_path / "sum"
    assert main(["eval", "all", stories260k, "--teacher", stories260k, "--ppl-data", "tinystories",
                 "--kld-data", "tinystories", "--seqlen", "64", "--max-windows", "2", "--limit", "2",
                 "--out", str(out)]) == 0
    s = json.loads((tmp_path / "sum.json").read_text())
    assert set(s["zeroshot"]) == {"piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq",
                                  "lambada"}
    assert "zeroshot_average" in s and s["perplexity"]["tinystories"]["windows"] == 2
    assert s["kld"]["top1_agreement"] == 1.0
    md = (tmp_path / "sum.md").read_text()
    assert "| piqa | 2 |" in md and "same top-1 token | 100.000%" in md


def test_harness_needs_or_runs_lm_eval(stories260k, capsys):
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        assert main(["eval", "harness", stories260k, "--tasks", "piqa", "--limit", "2"]) == 2
        assert "pip install 'onebit[lmeval]'" in _err(capsys)[0]
        return
    assert main(["eval", "harness", stories260k, "--tasks", "arc_easy", "--limit", "3"]) == 0
    assert "arc_easy: acc" in capsys.readouterr().out


SEQLEN_CMDS = [["eval", "ppl", "M"], ["eval", "kld", "T", "S"], ["eval", "all", "M", "--out", "o"],
               ["compare", "M"], ["distill", "T", "O"]]


@pytest.mark.parametrize("cmd", SEQLEN_CMDS)
@pytest.mark.parametrize("bad", ["-5", "1", "x"])
def test_seqlen_below_two_is_refused_before_loading(capsys, cmd, bad):
    """--seqlen 1 or negative: one line, exit 2, saying that 0 means the model's context."""
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--seqlen", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("onebit: error: argument --seqlen:")
    assert ("0 for the model's context" in err[0]) == (bad != "x")


@pytest.mark.parametrize("cmd", SEQLEN_CMDS)
def test_seqlen_zero_is_the_models_context_everywhere(cmd):
    from onebit.cli.main import build_parser

    p = build_parser()
    assert p.parse_args([*cmd, "--seqlen", "0"]).seqlen == 0
    sub = p._subparsers._group_actions[0].choices[cmd[0]]
    if cmd[0] == "eval":
        sub = sub._subparsers._group_actions[0].choices[cmd[1]]
    assert "0 = the model's context" in sub._option_string_actions["--seqlen"].help


@pytest.mark.parametrize("cmd", [["ppl", "M"], ["zeroshot", "M"], ["kld", "T", "S"], ["harness", "M"],
                                 ["all", "M", "--out", "o"]])
def test_eval_computes_in_float32_by_default(cmd):
    """An fp16 checkpoint is evaluated in fp32 on the CPU (fp16 math there is many times slower)."""
    from onebit.cli.main import build_parser

    assert build_parser().parse_args(["eval", *cmd]).dtype == "float32"
    assert build_parser().parse_args(["eval", *cmd, "--dtype", "auto"]).dtype == "auto"
