"""`onebit compare` on stories260K: the table, the CSV and the PNG; bad specs refused."""
import csv

import pytest

from onebit.cli.main import main
from onebit.compare import parse_method_spec
from onebit.errors import OneBitError


def test_compare_writes_table_csv_png(stories260k, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ONEBIT_DATA", str(data_dir))
    out = tmp_path / "cmp"
    rc = main(["compare", stories260k, "--methods", "fp,onebit,bitnet,ternary,rtn-w4,gptq-w3-g32,rtn-w2-g32",
               "--data", "tinystories", "--max-windows", "2", "--seqlen", "128", "--calib-samples", "8",
               "--calib-seqlen", "64", "--out", str(out), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert ("| method | bits/weight | bits/weight e2e | size MiB | ppl tinystories | KLD | top-1 % | avg of six "
            "| quant s | quant RSS rise MiB |") in printed
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["method"] for r in rows] == ["fp", "onebit", "bitnet", "ternary", "rtn-w4", "gptq-w3-g32",
                                           "rtn-w2-g32"]
    by = {r["method"]: r for r in rows}
    bpw = {k: float(v["bits/weight"]) for k, v in by.items()}
    assert bpw["fp"] == 32 and 1 < bpw["bitnet"] < bpw["onebit"] < 1.5 < 2 < bpw["ternary"] < 2.1
    assert 4 < bpw["rtn-w4"] < 4.5 and 3 < bpw["gptq-w3-g32"] < 4
    size = {k: float(v["size MiB"]) for k, v in by.items()}
    assert size["bitnet"] < size["rtn-w4"] < size["fp"]
    ppl = {k: float(v["ppl tinystories"]) for k, v in by.items()}
    assert ppl["fp"] < ppl["rtn-w4"] < ppl["bitnet"]
    assert (out / "compare.md").read_text().startswith("| method |")
    assert (out / "ppl_vs_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec,check", [
    ("rtn-w4", lambda c: c.method == "rtn" and c.bits == 4 and c.group_size == 0 and c.sym),
    ("rtn-w2-g64", lambda c: c.bits == 2 and c.group_size == 64),
    ("rtn-w4-asym", lambda c: c.sym is False),
    ("gptq-w3-g64", lambda c: c.method == "gptq" and c.bits == 3 and c.group_size == 64),
    ("gptq-w4-actorder-mse", lambda c: c.act_order and c.clip == "mse"),
    ("rtn-w8-tensor-a8", lambda c: c.group_size == -1 and c.act_bits == 8),
    ("onebit-w1a8", lambda c: c.method == "onebit-w1a8" and c.act_bits == 8),
    ("bitnet-a0", lambda c: c.method == "bitnet" and c.act_bits == 0),
    ("fp", lambda c: c is None),
])
def test_spec_parser(spec, check):
    assert check(parse_method_spec(spec))


@pytest.mark.parametrize("spec,match", [
    ("nope-w4", "unknown method 'nope-w4'; valid methods: " + ".*".join(__import__("onebit").available_methods())),
    ("rtn-w9", "choose one of 2, 3, 4, 5, 6, 7, 8"),
    ("rtn-w4-q7", "unknown modifier 'q7'; valid modifiers"),
    ("bitnet-w4", "does not apply"),
])
def test_bad_specs(spec, match):
    with pytest.raises(OneBitError, match=match):
        parse_method_spec(spec)


def test_cli_bad_input_one_line_exit_2(stories260k, tmp_path, capsys):
    assert main(["compare", stories260k, "--methods", "rtn-w4,nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onebit: error: unknown method 'nope'")
    for argv, match in [(["--method", "rtn", "--bits", "1"], "choose one of 2, 3"),
                        (["--method", "gptq", "--group-size", "100000"], "larger than layer"),
                        (["--method", "nope"], "valid methods:")]:
        rc = main(["quantize", stories260k, str(tmp_path / "q"), *argv, "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "q").exists()


def test_compare_with_distill_budget_and_kl(stories260k, data_dir, monkeypatch):
    from onebit import compare as C

    monkeypatch.setenv("ONEBIT_DATA", str(data_dir))
    rows = C.run_compare(stories260k, C.parse_methods("fp,rtn-w2-g32"), ["tinystories"], seqlen=64,
                         max_windows=2, calib_samples=8, calib_seqlen=32, distill=2)
    assert [r.method for r in rows] == ["fp", "rtn-w2-g32"]
    assert rows[0].extra["kl_to_teacher"] == 0.0 and rows[1].extra["kl_to_teacher"] > 0
    assert rows[1].extra["zeroshot_avg"] is None          # opt-in (--zeroshot-limit)


def _fake_run_compare(seen):
    from onebit.compare import Row

    def fake(model, methods, datasets, seqlen=None, max_windows=None, *a, **k):
        seen["max_windows"] = max_windows
        return [Row(lbl, 32.0 if c is None else 4.2, 1.0, 0.0, {d: 5.0 for d in datasets},
                    {"kl_to_teacher": 0.0, "zeroshot_avg": None}) for lbl, c in methods]
    return fake


def test_compare_default_answers_in_minutes(stories260k, tmp_path, capsys, monkeypatch):
    """By default a bounded number of windows per perplexity set, said in the output; --full: all."""
    from onebit import compare as C

    seen = {}
    monkeypatch.setattr(C, "run_compare", _fake_run_compare(seen))
    out = tmp_path / "cmp"
    assert main(["compare", stories260k, "--methods", "fp,rtn-w4", "--out", str(out), "-q"]) == 0
    assert seen["max_windows"] == C.DEFAULT_MAX_WINDOWS
    so = capsys.readouterr().out
    note = f"at most {C.DEFAULT_MAX_WINDOWS} windows per dataset"
    assert note in so and "--full" in so
    assert note in (out / "compare.md").read_text()
    assert "no calibration data (no method needs it)" in (out / "compare.md").read_text()  # rtn needs none
    assert main(["compare", stories260k, "--methods", "fp,rtn-w4", "--out", str(out), "--full", "-q"]) == 0
    assert seen["max_windows"] is None
    assert "all windows" in (out / "compare.md").read_text()
    assert main(["compare", stories260k, "--methods", "fp", "--out", str(out), "--max-windows", "7", "-q"]) == 0
    assert seen["max_windows"] == 7
    capsys.readouterr()
    assert main(["compare", stories260k, "--out", str(out), "--full", "--max-windows", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--full" in err[0] and "--max-windows" in err[0]


def test_compare_without_matplotlib_writes_the_tables_and_says_how_to_get_the_plot(
        stories260k, tmp_path, capsys, monkeypatch):
    import sys

    from onebit import compare as C

    monkeypatch.setattr(C, "run_compare", _fake_run_compare({}))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "cmp"
    assert main(["compare", stories260k, "--methods", "fp,rtn-w4", "--out", str(out), "-q"]) == 0
    assert (out / "compare.md").exists() and (out / "compare.csv").exists()
    assert not (out / "ppl_vs_bits.png").exists()
    cap = capsys.readouterr()
    assert cap.err.strip() == ("onebit: note: " + C.NO_PLOT_NOTE.format(name=out / "ppl_vs_bits.png"))
    assert "pip install 'onebit[plot]'" in cap.err and "ppl_vs_bits.png" not in cap.out


def test_interrupted_run_keeps_the_rows_it_finished(stories260k, tmp_path, capsys, monkeypatch):
    """compare.md/.csv are rewritten after every method: a run that dies keeps its finished rows and
    says which methods were still to come."""
    from onebit import compare as C

    def dies_after_one(model, methods, datasets, seqlen=None, max_windows=None, *a, **k):
        on_row = k.get("on_row") or next(x for x in a if callable(x))
        lbl, _ = methods[0]
        on_row(C.Row(lbl, 32.0, 1.0, 0.0, {d: 5.0 for d in datasets}, {"kl_to_teacher": 0.0}))
        raise C.OneBitError("out of time")

    monkeypatch.setattr(C, "run_compare", dies_after_one)
    out = tmp_path / "cmp"
    assert main(["compare", stories260k, "--methods", "fp,rtn-w4,gptq-w4", "--out", str(out), "-q"]) == 2
    md = (out / "compare.md").read_text()
    assert "| fp | 32.000 |" in md and "Partial: 1 of 3 methods done; to come: rtn-w4, gptq-w4." in md
    assert [r["method"] for r in csv.DictReader(open(out / "compare.csv"))] == ["fp"]
    assert "out of time" in capsys.readouterr().err
