"""``onebit finetune``: a few steps on stories260K lower the held-aside ppl and write a checkpoint that
loads with its adapters; bad input is one line, exit 2, no output."""
import copy
import random
import re

import pytest
import torch

import onebit
from onebit.cli.main import main

SMALL = ["--steps", "8", "--seqlen", "32", "--batch-size", "4", "--lr", "1e-2", "--warmup", "1", "--rank", "4"]


def _text(n=200, seed=0) -> str:
    rng = random.Random(seed)
    names, things = ["Lily", "Tom", "Sue", "Ben", "Max"], ["ball", "cat", "tree", "cake", "boat"]
    return "\n\n".join(f"{a} had a red {t}. {a} liked the {t} very much. One day the {t} was gone. {a} was sad."
                       for a, t in ((rng.choice(names), rng.choice(things)) for _ in range(n)))


@pytest.fixture(scope="module")
def base(fp_260k, tok_260k, tmp_path_factory):
    d = tmp_path_factory.mktemp("ft") / "base"
    onebit.save(onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False), d, tokenizer=tok_260k)
    return str(d)


@pytest.fixture(scope="module")
def train_txt(tmp_path_factory):
    p = tmp_path_factory.mktemp("ftdata") / "train.txt"
    p.write_text(_text())
    return str(p)


def test_finetune_lowers_held_aside_ppl_and_saves_adapters(base, train_txt, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", base, str(out), "--data", train_txt, "--targets", "q_proj,v_proj,o_proj", *SMALL,
                 "-q"]) == 0
    stdout = capsys.readouterr().out
    m = re.search(r"held-aside ppl .*: ([\d.]+) -> ([\d.]+)", stdout)
    assert m and float(m.group(2)) < float(m.group(1)), stdout
    assert "kept as adapters" in stdout
    ft, b = onebit.load(out), onebit.load(base)
    assert sorted(ft.config.onebit_adapters["modules"]) == sorted(
        n for n in b.config.quantization_config["modules"] if n.endswith(("q_proj", "v_proj", "o_proj")))
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        got = ft(x).logits
        assert not torch.allclose(got, b(x).logits)
    from onebit.integrations import hf

    if hf._registered:
        from transformers import AutoModelForCausalLM

        with torch.no_grad():
            assert torch.equal(AutoModelForCausalLM.from_pretrained(str(out))(x).logits, got)
    assert (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_bad_input_is_one_line_exit_2_no_output(base, train_txt, fp_260k, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    short = tmp_path / "short.txt"
    short.write_text("Lily had a cat.")
    ts = str(data_dir / "tinystories" / "tinystories_val_sample.txt")
    cases = [
        ([base, str(out), "--data", ts], "evaluation file"),
        ([base, str(out), "--data", "tinystories"], "evaluation dataset"),
        ([base, str(out), "--data", str(tmp_path / "missing.txt")], "does not exist"),
        ([base, str(out), "--data", str(short)], "too few"),
        ([base, str(out), "--data", train_txt, "--targets", "qproj"], "matches no packed layer"),
        ([base, str(out), "--data", train_txt, "--merge"], "--merge"),
        ([base, str(out), "--data", train_txt, "--rank", "0"], "--rank"),
        ([base, str(out), "--data", train_txt, "--holdout", "0"], "--holdout"),
        ([str(tmp_path / "nope"), str(out), "--data", train_txt], "nope"),
        ([base, str(out), "--data", train_txt, "--seqlen", "1"], "seqlen"),
    ]
    for args, msg in cases:
        try:
            rc = main(["finetune", *args, "--steps", "1", "-q"])
        except SystemExit as e:  # an argument error: argparse exits
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        assert err.startswith("onebit: error:") and err.count("\n") == 1 and msg in err, (args, err)
        assert not out.exists()
    out.mkdir()
    assert main(["finetune", base, str(out), "--data", train_txt, "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
