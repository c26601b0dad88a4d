"""onebit's thread policy (src/onebit/threads.py, docs/threads.md): applied once, at one place,
before torch loads; the user's OMP_NUM_THREADS / OMP_WAIT_POLICY / GOMP_SPINCOUNT / --threads /
torch.set_num_threads win.  Each policy case runs in a fresh interpreter: libgomp reads its
environment when torch is imported, so the policy is per process."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import onebit
from onebit import threads

SRC = Path(onebit.__file__).resolve().parent
CLEAN = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "ONEBIT_THREAD_POLICY")


def run_py(code: str, **env) -> dict:
    """Run ``code`` in a fresh python with a clean OpenMP environment (+ ``env``); it prints JSON."""
    e = {k: v for k, v in os.environ.items() if k not in CLEAN}
    e.update(env)
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# import onebit (policy decided, hook installed), then pretend 8 CPUs are busy, then import torch
BUSY = """
import json, os, sys
import onebit
from onebit import threads
torch_before = "torch" in sys.modules
spin_at_import = os.environ.get("GOMP_SPINCOUNT")
threads.busy_cpus = lambda: {busy}
import torch
out = dict(torch_before=torch_before, spin_at_import=spin_at_import, spin=os.environ.get("GOMP_SPINCOUNT"),
           policy=threads.POLICY, threads=torch.get_num_threads())
{extra}
print(json.dumps(out))
"""


def test_default_sets_short_spin_before_torch_and_fewer_threads_when_busy():
    out = run_py(BUSY.format(extra="", busy=8))
    assert out["torch_before"] is False  # import onebit leaves torch to later: the env can still act
    assert out["spin_at_import"] is None  # chosen as torch loads, for the CPUs' state then
    assert out["spin"] == threads.SPINCOUNT_BUSY
    assert out["policy"]["spincount"] == int(threads.SPINCOUNT_BUSY)
    assert out["policy"]["busy"] == 8
    assert out["threads"] == 1  # 8 busy, whatever the CPU count: one thread
    assert out["policy"]["threads"] == 1 or torch.get_num_threads() == 1


def test_idle_machine_gets_the_longer_spin_and_every_thread():
    out = run_py(BUSY.format(extra="", busy=0))
    assert out["spin"] == threads.SPINCOUNT and int(threads.SPINCOUNT) > int(threads.SPINCOUNT_BUSY)
    assert out["policy"]["busy"] == 0 and out["policy"]["threads"] is None
    assert out["threads"] == torch.get_num_threads() or out["threads"] >= 1


def test_user_omp_num_threads_wins():
    out = run_py(BUSY.format(extra="", busy=8), OMP_NUM_THREADS="2")
    assert out["threads"] == 2  # busy, but the user said 2
    assert out["policy"]["threads"] is None and out["spin"] == threads.SPINCOUNT_BUSY  # the spin still applies
    assert "OMP_NUM_THREADS" in out["policy"]["reason"]


def test_user_wait_policy_and_spincount_win():
    out = run_py(BUSY.format(extra="", busy=8), OMP_WAIT_POLICY="ACTIVE")
    assert out["spin"] is None and out["policy"]["spincount"] is None
    out = run_py(BUSY.format(extra="", busy=8), GOMP_SPINCOUNT="7")
    assert out["spin"] == "7" and out["policy"]["spincount"] is None


def test_user_set_num_threads_after_import_wins():
    out = run_py(BUSY.format(extra="torch.set_num_threads(2); out['after'] = torch.get_num_threads()", busy=8))
    assert out["threads"] == 1 and out["after"] == 2


def test_cli_threads_wins_over_policy():
    extra = ("from onebit.cli.main import main\n"
             "out['rc'] = main(['info', '/nonexistent/ckpt', '--threads', '2', '-q'])\n"
             "out['after'] = torch.get_num_threads()")
    out = run_py(BUSY.format(extra=extra, busy=8))
    assert out["threads"] == 1  # the policy's choice ...
    assert out["after"] == 2  # ... and --threads wins, even when the command then fails
    assert out["rc"] == 2


def test_off_and_torch_first_leave_everything():
    code = ("import json, os, onebit; from onebit import threads; "
            "print(json.dumps(dict(spin=os.environ.get('GOMP_SPINCOUNT'), policy=threads.POLICY)))")
    out = run_py(code, ONEBIT_THREAD_POLICY="off")
    assert out["spin"] is None and "off" in out["policy"]["reason"]
    out = run_py("import torch\n" + code.replace("; ", "\n"))
    assert out["spin"] is None and "torch was imported" in out["policy"]["reason"]


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_cli_bad_threads_is_one_line_error(bad):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "info", "/nonexistent", "--threads", bad],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == f"onebit: error: --threads must be at least 1, got {bad}"


def test_choose_threads_arithmetic(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "POLICY", {"threads": None, "busy": None, "cpus": 16, "reason": ""})
    monkeypatch.setattr(threads, "busy_cpus", lambda: 5)
    try:
        torch.set_num_threads(16)
        threads._choose_threads()
        assert torch.get_num_threads() == 11 and threads.POLICY["threads"] == 11  # the free CPUs
        threads.POLICY["threads"] = None
        torch.set_num_threads(4)
        threads._choose_threads()
        assert torch.get_num_threads() == 4 and threads.POLICY["threads"] is None  # never more
    finally:
        torch.set_num_threads(before)


def test_busy_cpus_reads_the_run_queue():
    n = threads.busy_cpus(samples=3, interval=0.001)
    assert isinstance(n, int) and n >= 0


def test_policy_applied_once_at_one_place():
    first = threads.apply_policy()
    assert threads.apply_policy() is first  # a second call changes nothing
    calls, setters = [], []
    for f in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in ("apply_policy", "_apply_thread_policy"):
                    calls.append(f.relative_to(SRC).as_posix())
                if name == "set_num_threads":
                    setters.append(f.relative_to(SRC).as_posix())
    assert calls == ["__init__.py"]
    # thread counts are set by the policy and --threads (threads.py); cli/eval.py's own --threads
    # handling predates the common option and sets the same value again
    assert set(setters) <= {"threads.py", "cli/eval.py"}
    # in __init__.py the call comes before any other import of the package (which may load torch)
    body = ast.parse((SRC / "__init__.py").read_text()).body
    stmts = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    stmts = [s for s in stmts if not (isinstance(s, ast.ImportFrom) and s.module == "__future__")]
    assert isinstance(stmts[0], ast.ImportFrom) and stmts[0].module == "threads"
    assert isinstance(stmts[1], ast.Expr) and isinstance(stmts[1].value, ast.Call)
    # and threads.py itself imports no torch at module level
    mod = ast.parse((SRC / "threads.py").read_text())
    top = {a.name for s in mod.body if isinstance(s, ast.Import) for a in s.names}
    top |= {s.module or "" for s in mod.body if isinstance(s, ast.ImportFrom)}
    assert not any(m.startswith("torch") for m in top)
