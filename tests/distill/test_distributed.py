"""2 CPU processes (torchrun, gloo; DDP or FSDP) with the same global batch reach the same student as one."""
import os
import subprocess
import sys

import pytest
import torch

ARGS = ["--data-cache", "{cache}", "--samples", "8", "--seqlen", "32", "--steps", "3", "--batch-size", "4",
        "--warmup", "1", "--lr", "3e-3", "--save-every", "0", "-q"]


def _run(prefix, out, cache, extra=(), after=()):
    cmd = prefix + ["-m", "onebit.cli.main", "distill", *extra, out] + [a.format(cache=cache) for a in ARGS] \
        + list(after)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(f"{out}.state/state.pt", weights_only=True)


def _torchrun(offset=0):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(29500 + (os.getpid() + offset) % 1000)]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one(stories260k, tmp_path, strategy):
    cache = tmp_path / "cache"
    one = _run([sys.executable], str(tmp_path / "one"), cache, [stories260k])
    torchrun = _torchrun(strategy == "fsdp")
    # under FSDP the periodic evaluation is a collective too (every rank runs the forward)
    extra = ["--strategy", strategy] + (["--eval-data", "tinystories", "--eval-every", "2", "--eval-windows", "1",
                                         "--eval-seqlen", "32"] if strategy == "fsdp" else [])
    two = _run(torchrun, str(tmp_path / "two"), cache, [*extra, stories260k])
    assert one["step"] == two["step"] == 3
    assert sorted(one["student"]) == sorted(two["student"])
    for n, a in one["student"].items():
        # a different reduction order (all-reduce / reduce-scatter) moves a few near-zero gradients, and
        # Adam's normalisation turns that into ~1e-5 on ~1e-4 of the weights; steps themselves are ~1e-2
        assert torch.allclose(a, two["student"][n], rtol=1e-4, atol=1e-4), n
    assert (tmp_path / "two" / "model.safetensors").is_file()
    from onebit.loading import load_checkpoint

    a, b = load_checkpoint(str(tmp_path / "one")), load_checkpoint(str(tmp_path / "two"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for n, t in sa.items():  # packed signs identical, g/h within fp16 rounding
        assert torch.allclose(t.float(), sb[n].float(), rtol=1e-3, atol=1e-4), n


def test_fsdp_resume_equals_uninterrupted(stories260k, tmp_path):
    """Killed after the step-2 checkpoint and resumed under FSDP (state gathered to full tensors and
    re-sharded on load) = the uninterrupted FSDP run."""
    cache, fsdp = tmp_path / "cache", ["--strategy", "fsdp", stories260k]
    full = _run(_torchrun(2), str(tmp_path / "full"), cache, fsdp)
    _run(_torchrun(3), str(tmp_path / "part"), cache, fsdp, ["--save-every", "1", "--stop-at", "2"])
    part = _run(_torchrun(4), str(tmp_path / "part"), cache, fsdp, ["--resume"])
    assert part["step"] == full["step"] == 3
    for n, a in full["student"].items():
        assert torch.allclose(a, part["student"][n], rtol=0, atol=1e-6), n


def _run_printing(prefix, out, cache, extra=()):
    cmd = prefix + ["-m", "onebit.cli.main", "distill", *extra, out] + [a.format(cache=cache) for a in ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(f"{out}.state/state.pt", weights_only=True), r.stdout


def test_gradient_compression_under_ddp(stories260k, tmp_path):
    """fp16 follows the uncompressed run's losses and weights within its rounding and sends half the
    bytes; PowerSGD (rank 1, compressing from the third step on) sends fewer still."""
    import json
    import re

    cache, runs = tmp_path / "cache", {}
    for i, kind in enumerate(["none", "fp16", "powersgd"]):
        state, stdout = _run_printing(_torchrun(5 + i), str(tmp_path / kind), cache,
                                      ["--grad-compression", kind, stories260k])
        m = re.search(r"gradients all-reduced per step \((\w+)\): ([\d,]+) bytes in the last step, ([\d,]+) in "
                      r"the first", stdout)
        assert m and m.group(1) == kind, stdout
        last, first = (int(m.group(k).replace(",", "")) for k in (2, 3))
        history = json.loads((tmp_path / f"{kind}.state" / "history.json").read_text())
        runs[kind] = state, last, first, history[-1]["loss"]
    none, fp16, psgd = runs["none"], runs["fp16"], runs["powersgd"]
    assert none[0]["step"] == fp16[0]["step"] == psgd[0]["step"] == 3
    assert fp16[1] * 2 == none[1] and fp16[2] * 2 == none[2]  # every gradient sent in 16 bits
    assert psgd[2] == none[2]  # PowerSGD's first steps are plain fp32 all-reduces
    assert psgd[1] < fp16[1] / 2  # then the rank-1 factors (and the vectors it leaves alone)
    assert abs(fp16[3] - none[3]) <= 1e-3 * abs(none[3]), (fp16[3], none[3])
    # fp16 rounding flushes or moves a few near-zero gradients, which Adam's normalisation turns into
    # steps of up to ~lr (3e-3) on those weights; the rest agree within 1e-3
    over, total = 0, 0
    for n, a in none[0]["student"].items():
        d = (a - fp16[0]["student"][n]).abs()
        assert d.max() <= 3 * 3e-3, n
        over, total = over + int((d > 1e-3).sum()), total + d.numel()
    assert over <= 0.01 * total, (over, total)
    assert abs(psgd[3] - none[3]) <= 5e-2 * abs(none[3])  # compressed, not broken


def test_gradient_compression_refused_with_fsdp_and_a_no_op_in_one_process(stories260k, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "onebit.cli.main", "distill", stories260k]
    r = subprocess.run(base + [str(tmp_path / "f"), "--strategy", "fsdp", "--grad-compression", "fp16"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 2 and r.stderr.startswith("onebit: error:") and r.stderr.count("\n") == 1, r.stderr
    assert "FSDP" in r.stderr and not (tmp_path / "f").exists()
    cmd = base + [str(tmp_path / "one"), "--grad-compression", "powersgd"] + \
        [a.format(cache=tmp_path / "cache") for a in ARGS if a != "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "does nothing in a single process" in r.stderr and "gradients all-reduced" not in r.stdout
