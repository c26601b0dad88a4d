"""The CLI on stories260K: quantize, info, eval ppl, generate; exit codes and bad input."""
import json
import subprocess
import sys

import pytest

from onebit.cli.main import main


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture(scope="module")
def packed(tmp_path_factory, stories260k):
    out = tmp_path_factory.mktemp("cli") / "s260k-1bit"
    rc, so, se = run_cli("quantize", stories260k, out, "--method", "onebit", "--init", "nmf")
    assert rc == 0, se
    assert "bits/weight" in so
    return out


def test_info(packed, capsys):
    assert main(["info", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "bits/weight" in out and "embedding" in out and "init=nmf" in out
    assert main(["info", str(packed), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["quantization_config"]["init"] == "nmf" and s["quantized_modules"] == 35


def test_eval_ppl(packed, stories260k, tmp_path, capsys):
    j = tmp_path / "r.json"
    assert main(["eval", "ppl", stories260k, "--data", "tinystories", "--max-windows", "3",
                 "--json", str(j)]) == 0
    fp = json.loads(j.read_text())["perplexity"]["tinystories"]["ppl"]
    assert main(["eval", "ppl", str(packed), "--data", "tinystories", "--max-windows", "3",
                 "--json", str(j)]) == 0
    q = json.loads(j.read_text())["perplexity"]["tinystories"]
    assert q["windows"] == 3 and q["seqlen"] == 512
    assert 1 < fp < 20 and q["ppl"] > fp


def test_eval_ppl_text_file(packed, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("Once upon a time there was a little dog. " * 40)
    assert main(["eval", "ppl", str(packed), "--data", str(f), "--seqlen", "64"]) == 0
    assert "ppl" in capsys.readouterr().out


def test_generate(packed, capsys):
    assert main(["generate", str(packed), "--prompt", "Once upon", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("Once upon")


def test_generate_int8_activations(packed, capsys, monkeypatch):
    """--int8-activations selects the int8 kernels for this process (ONEBIT_CPU_ALGO=i8)."""
    monkeypatch.setenv("ONEBIT_CPU_ALGO", "simd")   # restored after the test
    assert main(["generate", str(packed), "--prompt", "Once upon", "--max-new-tokens", "8",
                 "--temperature", "0", "--int8-activations"]) == 0
    assert capsys.readouterr().out.startswith("Once upon")
    import os

    assert os.environ["ONEBIT_CPU_ALGO"] == "i8"


def test_quantize_refuses_existing_out(packed, stories260k):
    before = sorted(p.name for p in packed.iterdir())
    rc, so, se = run_cli("quantize", stories260k, packed)
    assert rc == 2 and "--overwrite" in se and "Traceback" not in se
    assert len(se.strip().splitlines()) == 1
    assert sorted(p.name for p in packed.iterdir()) == before


def test_quantize_overwrite(packed, stories260k):
    rc, so, se = run_cli("quantize", stories260k, packed, "--overwrite")
    assert rc == 0, se
    assert main(["info", str(packed)]) == 0


@pytest.mark.parametrize("args,msg", [
    (["quantize", "/nonexistent/model", "{out}"], "does not exist"),
    (["quantize", "{file}", "{out}"], "not a model directory"),
    (["quantize", "{s260k}", "{out}", "--method", "nope"], "unknown method 'nope'"),
    (["eval", "ppl", "{out}"], "does not exist"),
    (["eval", "ppl", "{s260k}", "--data", "/no/such.txt"], "missing file"),
    (["info", "{s260k}"], "no quantization_config"),
])
def test_bad_input_one_line_exit_2(args, msg, stories260k, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    out = tmp_path / "out"
    args = [a.format(out=out, file=tmp_path, s260k=stories260k) for a in args]
    rc, so, se = run_cli(*args)
    assert rc == 2, se
    assert msg in se and "Traceback" not in se
    assert len(se.strip().splitlines()) == 1, se
    assert not out.exists()


def test_truncated_checkpoint_cli(packed, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(packed, bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    for cmd in (["info", bad], ["eval", "ppl", bad], ["generate", bad]):
        rc, so, se = run_cli(*cmd)
        assert rc == 2 and "truncated" in se and "Traceback" not in se, (cmd, se)


def test_newer_version_cli(packed, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(packed, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (bad / "config.json").write_text(json.dumps(cfg))
    rc, so, se = run_cli("generate", bad)
    assert rc == 2 and "newer" in se and "Traceback" not in se


def test_help_explains():
    rc, so, se = run_cli("--help")
    assert rc == 0 and "quantize" in so and "demo" in so
    rc, so, se = run_cli("quantize", "--help")
    assert rc == 0 and "--init" in so and "--overwrite" in so


def test_demo_short(stories260k, tmp_path, monkeypatch, capsys):
    """`onebit demo` end to end on stories260K with a 3-step distillation: every stage reports."""
    monkeypatch.setenv("ONEBIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--model", stories260k, "--out", str(out), "--max-windows", "2",
                 "--distill-steps", "3", "--polish-steps", "2", "--distill-samples", "8", "--max-new-tokens", "4"]) == 0
    so = capsys.readouterr().out
    assert "reloaded: logits identical" in so and "bits/weight" in so
    assert "OneBit-SVID" in so and "OneBit distilled" in so and "1-bit + KD" in so
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert list((tmp_path / "cache" / "distill-data").glob("teacher-*.safetensors"))


def test_rotate_with_streaming_is_refused(stories260k, tmp_path):
    """The rotation transforms the whole model in memory: --streaming --rotate is a one-line error."""
    out = tmp_path / "rot"
    rc, so, se = run_cli("quantize", stories260k, out, "--method", "onebit", "--rotate", "--streaming")
    assert rc == 2 and se.strip().startswith("onebit: error:") and "--no-streaming" in se, se
    assert len(se.strip().splitlines()) == 1 and not out.exists()
