"""2 CPU processes (torchrun, gloo, DDP) with the same global batch reach the same student as one."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

ARGS = ["--data-cache", "{cache}", "--samples", "8", "--seqlen", "32", "--steps", "3", "--batch-size", "4",
        "--warmup", "1", "--lr", "3e-3", "--save-every", "0", "-q"]


def _run(prefix, out, cache, extra=()):
    cmd = prefix + ["-m", "onebit.cli.main", "distill", *extra, out] + [a.format(cache=cache) for a in ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(f"{out}.state/state.pt", weights_only=True)


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_two_processes_equal_one(stories260k, tmp_path):
    cache = tmp_path / "cache"
    one = _run([sys.executable], str(tmp_path / "one"), cache, [stories260k])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(29500 + os.getpid() % 1000)]
    two = _run(torchrun, str(tmp_path / "two"), cache, [stories260k])
    assert one["step"] == two["step"] == 3
    assert sorted(one["student"]) == sorted(two["student"])
    for n, a in one["student"].items():
        assert torch.allclose(a, two["student"][n], rtol=1e-4, atol=1e-5), n
    assert (tmp_path / "two" / "model.safetensors").is_file()
