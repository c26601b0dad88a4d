"""Progress where stderr is not a terminal: plain lines, at most one per interval and bar."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from onebit import progress


@pytest.fixture
def plain():
    prev = progress.set_plain_lines(True, interval=0.0)
    yield
    progress.set_plain_lines(**prev)


def test_plain_lines_format(plain, capsys):
    for _ in progress.Progress(range(4), desc="quantize [rtn]", unit="layer"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    lines = err.splitlines()
    assert lines and all(line.startswith("onebit: quantize [rtn]: ") for line in lines), lines
    assert lines[-1].startswith("onebit: quantize [rtn]: 4/4 (100%), ") and " elapsed" in lines[-1]


def test_plain_lines_throttled(capsys):
    prev = progress.set_plain_lines(True, interval=3600.0)
    try:
        bar = progress.Progress(total=10, desc="distill")
        for _ in range(10):
            bar.update(1)
            bar.set_postfix(loss="1.0")
        bar.close()
    finally:
        progress.set_plain_lines(**prev)
    assert capsys.readouterr().err == ""  # a short bar says nothing


def test_off_is_plain_tqdm(capsys):
    prev = progress.set_plain_lines(False)
    try:
        for _ in progress.Progress(range(3), desc="x", disable=True):
            pass
    finally:
        progress.set_plain_lines(**prev)
    assert capsys.readouterr().err == ""


def _cli(*args):
    env = dict(os.environ, ONEBIT_PROGRESS_INTERVAL="0")
    return subprocess.run([sys.executable, "-m", "onebit.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=env)


def test_piped_cli_prints_progress_lines(stories260k, data_dir, tmp_path):
    r = _cli("eval", "ppl", stories260k, "--data", "tinystories", "--max-windows", "3", "--seqlen", "64")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("onebit: ") and "3/3 (100%)" in line for line in r.stderr.splitlines()), r.stderr
    assert "\r" not in r.stderr
    # bars made outside this package's own modules (the method registry's per-layer loop) too
    r = _cli("quantize", stories260k, tmp_path / "q", "--method", "rtn")
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("onebit: quantize [rtn]: ") for line in r.stderr.splitlines()), r.stderr
    # -q: nothing but errors and results
    r = _cli("eval", "ppl", stories260k, "--data", "tinystories", "--max-windows", "2", "--seqlen", "64", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
