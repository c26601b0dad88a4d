"""``onebit distill`` end to end on stories260K, and every bad input as a one-line error, exit 2."""
import json
import subprocess
import sys

import pytest
import torch

from onebit.cli.main import main

SMALL = ["--samples", "8", "--seqlen", "32", "--steps", "4", "--batch-size", "4", "--warmup", "1", "-q"]


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("onebit: error:") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("distill-cache"))


def test_distill_writes_a_checkpoint_the_other_commands_read(stories260k, tmp_path, cache, capsys):
    out = tmp_path / "kd"
    assert main(["distill", stories260k, str(out), "--data-cache", cache, "--eval-data", "tinystories",
                 "--eval-windows", "2", "--eval-seqlen", "64", *SMALL]) == 0
    so = capsys.readouterr().out
    assert "eval ppl" in so and "bits/weight" in so
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization_config"]["method"] == "onebit" and info["quantized_modules"] == 35
    hist = json.loads((tmp_path / "kd.state" / "history.json").read_text())
    assert [h["step"] for h in hist if "ppl" in h][-1] == 4
    # continue training from the packed checkpoint (--student): the polish recipe, latents reset every 2
    # steps, the training step compiled
    assert main(["distill", stories260k, str(tmp_path / "kd2"), "--student", str(out), "--data-cache", cache,
                 "--alpha", "0", "--reset-every", "2", "--compile", *SMALL]) == 0
    assert (tmp_path / "kd2" / "model.safetensors").is_file()
    # the same with the parameters averaged over the last half of the steps: both scores reported
    assert main(["distill", stories260k, str(tmp_path / "kd3"), "--student", str(out), "--data-cache", cache,
                 "--alpha", "0", "--average-last", "0.5", "--eval-data", "tinystories", "--eval-windows", "2",
                 "--eval-seqlen", "64", *SMALL]) == 0
    so = capsys.readouterr().out
    assert "the last step's parameters:" in so and "saved: the averaged ones" in so
    assert (tmp_path / "kd3" / "model.safetensors").is_file()


def test_stop_and_resume_via_cli(stories260k, tmp_path, cache, capsys):
    out = tmp_path / "r"
    assert main(["distill", stories260k, str(out), "--data-cache", cache, "--stop-at", "2", *SMALL]) == 0
    assert "stopped at step 2/4" in capsys.readouterr().out and not out.exists()
    assert main(["distill", stories260k, str(out), "--data-cache", cache, "--resume", *SMALL]) == 0
    state = torch.load(tmp_path / "r.state" / "state.pt", weights_only=True)
    assert state["step"] == 4 and out.is_dir()


def test_bad_inputs(stories260k, stories3m, data_dir, tmp_path, cache, capsys):
    ts = str(data_dir / "tinystories" / "tinystories_val_sample.txt")
    base = [stories260k, str(tmp_path / "o"), "--data-cache", cache, *SMALL]
    assert main(["distill", *base, "--data", ts]) == 2
    assert "evaluation file" in _err(capsys)
    assert main(["distill", *base, "--data", "wikitext2"]) == 2
    assert "evaluation dataset" in _err(capsys)
    assert main(["distill", *base, "--resume"]) == 2
    assert "no training checkpoint" in _err(capsys)
    (tmp_path / "o.state").mkdir()
    (tmp_path / "o.state" / "state.pt").write_bytes(b"\x00garbage")
    assert main(["distill", *base, "--resume"]) == 2
    assert "not a readable training checkpoint" in _err(capsys)
    assert main(["distill", *base, "--method", "nope"]) == 2
    assert "unknown method" in _err(capsys)
    assert main(["distill", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "does not exist" in _err(capsys)
    assert main(["distill", *base, "--batch-size", "3", "--grad-accum", "2"]) == 2
    assert "multiple" in _err(capsys)
    assert main(["distill", *base, "--reset-every", "-1"]) == 2
    assert "--reset-every" in _err(capsys)
    assert main(["distill", *base, "--average-last", "2"]) == 2
    assert "--average-last" in _err(capsys)
    assert main(["distill", *base, "--gen-batch-size", "0"]) == 2
    assert "--gen-batch-size" in _err(capsys)


def _packed(model_dir, out):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "quantize", str(model_dir), str(out), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_vocab_and_architecture_mismatch(stories260k, stories3m, tmp_path, cache, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    _packed(stories260k, tmp_path / "s260k")  # vocab 512 vs stories3M's 4096
    assert main(["distill", stories3m, str(tmp_path / "o"), "--student", str(tmp_path / "s260k"), *SMALL]) == 2
    assert "vocabulary mismatch" in _err(capsys)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    _packed(tmp_path / "tiny", tmp_path / "tiny1")
    assert main(["distill", stories260k, str(tmp_path / "o"), "--student", str(tmp_path / "tiny1"),
                 "--data-cache", cache, *SMALL]) == 2
    assert "architecture mismatch" in _err(capsys)


def test_blockwise_stage_via_cli(stories260k, tmp_path, cache, capsys):
    small = ["--samples", "8", "--seqlen", "32", "--batch-size", "4", "--warmup", "1", "-q",
             "--data-cache", cache, "--blockwise-steps", "3", "--block-batch-size", "4"]
    out = tmp_path / "bw"
    assert main(["distill", stories260k, str(out), "--steps", "0", "--block-loss", "token", *small]) == 0
    so = capsys.readouterr().out
    assert "block-wise: 5 blocks" in so and "35 linear layers" in so
    st = json.loads((tmp_path / "bw.state" / "blocks" / "blocks.json").read_text())
    assert st["done"] == 5 and len(st["history"]) == 5
    # --resume reuses the finished blocks; then a short end-to-end stage
    assert main(["distill", stories260k, str(tmp_path / "bw2"), "--steps", "2", "--resume",
                 "--state-dir", str(tmp_path / "bw.state"), "--block-loss", "token", *small]) == 0
    so = capsys.readouterr().out
    assert "2 steps" in so and "after a block-wise stage of 5 blocks" in so
    assert main(["info", str(tmp_path / "bw2"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantized_modules"] == 35


def test_concat_sequences_via_cli(stories260k, tmp_path, cache, capsys):
    small = ["--samples", "8", "--seqlen", "32", "-q", "--data-cache", cache, "--blockwise-steps", "1",
             "--block-batch-size", "2", "--steps", "0"]
    state = ["--state-dir", str(tmp_path / "cat.state")]
    assert main(["distill", stories260k, str(tmp_path / "cat"), "--concat-sequences", "2", *state, *small]) == 0
    assert "block-wise: 5 blocks" in capsys.readouterr().out
    # the rows are part of what a resume must share: 8 x 31 tokens are not the 4 x 62 of the state
    assert main(["distill", stories260k, str(tmp_path / "cat2"), "--resume", *state, *small]) == 2
    assert "another method, data or setting" in _err(capsys)
    assert main(["distill", stories260k, str(tmp_path / "cat3"), "--concat-sequences", "3", *small]) == 2
    assert "--concat-sequences" in _err(capsys)
    assert main(["distill", stories260k, str(tmp_path / "cat4"), "--concat-sequences", "2",
                 "--block-samples", "5", *small]) == 2
    assert "number of rows (4" in _err(capsys)
    # stories260K's context is 512 tokens: rows of 4 x 255 are refused before any training
    assert main(["distill", stories260k, str(tmp_path / "cat5"), "--concat-sequences", "4", *small[:2],
                 "--seqlen", "256", *small[4:]]) == 2
    assert "exceed the teacher's context of 512" in _err(capsys)
    assert not (tmp_path / "cat5").exists()


def test_repeat_frac_via_cli(stories260k, tmp_path, cache, capsys):
    """--repeat-frac changes the end-to-end rows only (a block state without it still resumes);
    --block-repeat-frac changes the block-wise rows (that resume is refused); bad values are one-line
    errors before any training."""
    small = ["--samples", "8", "--seqlen", "128", "--concat-sequences", "2", "-q", "--data-cache", cache,
             "--blockwise-steps", "1", "--block-batch-size", "2", "--state-dir", str(tmp_path / "rep.state")]
    assert main(["distill", stories260k, str(tmp_path / "rep"), "--steps", "0", *small]) == 0
    capsys.readouterr()
    assert main(["distill", stories260k, str(tmp_path / "rep1"), "--resume", "--block-repeat-frac", "0.3",
                 "--steps", "0", *small]) == 2
    assert "another method, data or setting" in _err(capsys)
    assert main(["distill", stories260k, str(tmp_path / "rep2"), "--resume", "--repeat-frac", "0.3",
                 "--steps", "1", "--batch-size", "2", *small]) == 0
    assert "after a block-wise stage of 5 blocks" in capsys.readouterr().out
    assert main(["distill", stories260k, str(tmp_path / "rep3"), "--repeat-frac", "0.3", "--steps", "0",
                 *small]) == 2
    assert "needs --steps N > 0" in _err(capsys)
    for flag in ("--repeat-frac", "--block-repeat-frac"):
        assert main(["distill", stories260k, str(tmp_path / "rep4"), flag, "1.5", "--steps", "1", *small]) == 2
        assert f"{flag} must be in [0, 1)" in _err(capsys)
    assert not (tmp_path / "rep3").exists() and not (tmp_path / "rep4").exists()


def test_block_bf16_reaches_the_blockwise_stage(stories260k, tmp_path, cache, capsys):
    """--block-bf16 trains the blocks under autocast: it is part of the block state a resume must share,
    while --bf16 (the end-to-end stage's) is not."""
    small = ["--samples", "8", "--seqlen", "32", "-q", "--data-cache", cache, "--blockwise-steps", "1",
             "--block-batch-size", "2", "--steps", "0", "--state-dir", str(tmp_path / "bf.state")]
    assert main(["distill", stories260k, str(tmp_path / "bf"), "--block-bf16", *small]) == 0
    capsys.readouterr()
    assert main(["distill", stories260k, str(tmp_path / "bf2"), "--resume", "--bf16", *small]) == 2
    assert "another method, data or setting" in _err(capsys)
    assert main(["distill", stories260k, str(tmp_path / "bf3"), "--resume", "--block-bf16", *small]) == 0


def test_blockwise_bad_inputs(stories260k, tmp_path, cache, capsys):
    base = [stories260k, str(tmp_path / "o"), "--data-cache", cache, *SMALL]
    assert main(["distill", *base, "--steps", "0"]) == 2
    assert "nothing to train" in _err(capsys)
    assert main(["distill", *base, "--blockwise-steps", "2", "--student", stories260k]) == 2
    assert "cannot start from --student" in _err(capsys)
    assert main(["distill", *base, "--blockwise-steps", "2", "--block-samples", "99"]) == 2
    assert "--block-samples" in _err(capsys)
    assert main(["distill", *base, "--blockwise-steps", "2", "--no-start-frac", "2"]) == 2
    assert "--no-start-frac" in _err(capsys)
    assert main(["distill", *base, "--blockwise-steps", "-1"]) == 2
    assert ">= 0" in _err(capsys)


def test_budget_fits_the_schedule_and_saves_the_student(stories260k, tmp_path, cache, capsys, monkeypatch):
    """--budget without --steps: the schedule is fitted to the time left, the student saved, the
    time used reported; a resume keeps the fitted schedule."""
    import re

    monkeypatch.setattr("onebit.cli.distill._SAVE_RESERVE_S", 0.0)  # a tiny budget: all of it trains
    out = tmp_path / "b"
    small = SMALL[:4] + SMALL[6:]  # without --steps
    assert main(["distill", stories260k, str(out), "--data-cache", cache, "--budget", "0.1", "--stop-at", "5",
                 *small]) == 0
    so = capsys.readouterr().out
    fitted = int(re.search(r"schedule fitted to (\d+) steps", so).group(1))
    assert fitted > 5  # seconds of budget at a few ms per step
    assert f"stopped at step 5/{fitted}" in so and not out.exists()  # --stop-at: resumable
    assert main(["distill", stories260k, str(out), "--data-cache", cache, "--budget", "10", "--resume",
                 *small]) == 0
    so = capsys.readouterr().out
    assert "fitted" not in so  # the resumed run keeps the fitted schedule
    state = torch.load(tmp_path / "b.state" / "state.pt", weights_only=True)
    assert state["step"] == fitted and json.loads(state["fixed"])["steps"] == fitted
    assert (out / "model.safetensors").is_file() and "--budget: the command took" in so


def test_budget_stops_a_long_schedule_and_still_saves(stories260k, tmp_path, cache, capsys):
    out = tmp_path / "s"
    small = SMALL[:4] + SMALL[6:]  # without --steps
    assert main(["distill", stories260k, str(out), "--data-cache", cache, "--budget", "0.2", "--steps", "100000",
                 *small]) == 0
    state = torch.load(tmp_path / "s.state" / "state.pt", weights_only=True)
    assert 0 < state["step"] < 100000 and (out / "model.safetensors").is_file()
    assert "--budget: the command took" in capsys.readouterr().out


def test_budget_must_be_positive(stories260k, tmp_path, cache, capsys):
    assert main(["distill", stories260k, str(tmp_path / "z"), "--budget", "0", *SMALL]) == 2
    assert "--budget must be > 0" in _err(capsys)
    assert main(["distill", stories260k, str(tmp_path / "z"), "--budget", "5", "--steps", "0",
                 "--blockwise-steps", "2", "-q"]) == 2
    assert "--steps 0 has none" in _err(capsys)
