"""Small layers run on the calling thread (``par_grain``: a chunk holds at least
ONEBIT_CPU_PAR_BYTES of work), so at the default the test shapes rarely split across threads.
This runs the kernels in a child process with 2 threads and ONEBIT_CPU_PAR_BYTES=1 (every loop split
as finely as its minimum grain allows) and with a huge value (never split), and asks both to give
the same outputs, equal to the reference (exact paths) or to each other (the int8 paths)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys, torch
torch.set_num_threads(2)
sys.path.insert(0, sys.argv[1])
from _cases import binary_layer, make_x, rel_err, ternary_layer
from onebit.kernels.cpu import loader
from onebit.kernels.dispatch import _ALGO
from onebit.kernels.reference import binary_linear_ref, ternary_linear_ref
mod = loader.load()
NEVER = 1 << 40
out = {}
for isa in sorted({0, 1, mod.best_isa()}):
    for algo in ("simd", "i8", "psum", "shift"):
        if algo in ("psum", "shift") and isa != 2:
            continue
        for (o, i) in ((300, 1031), (64, 2048)):
            p, g, h = binary_layer(o, i)
            for b in (1, 5):
                x = make_x(b, i, torch.float32)
                y = mod.binary_linear(x, p, g, h, i, isa, NEVER, _ALGO[algo])
                key = f"bin/{isa}/{algo}/{o}x{i}/{b}"
                out[key] = {"sum": float(y.double().sum()), "err": rel_err(y, binary_linear_ref(x, p, g, h, i))}
    p, s = ternary_layer(300, 1031)
    x = make_x(3, 1031, torch.float32)
    y = mod.ternary_linear(x, p, s, 1031, isa, NEVER)
    out[f"ter/{isa}"] = {"sum": float(y.double().sum()), "err": rel_err(y, ternary_linear_ref(x, p, s, 1031))}
print(json.dumps(out))
"""


def _run(par_bytes: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "ONEBIT_CPU_PAR_BYTES": par_bytes, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", CHILD, here], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to split a loop")
def test_split_and_unsplit_loops_agree():
    split, whole = _run("1"), _run(str(1 << 40))
    assert split.keys() == whole.keys() and len(split) >= 10
    for k in split:
        if "/i8/" not in k:  # exact paths: the reference's tolerance
            assert split[k]["err"] <= 1e-5 and whole[k]["err"] <= 1e-5, (k, split[k], whole[k])
        else:  # int8 activations: ~1% from exact, and the same integers whichever thread computes a row
            assert split[k]["err"] <= 0.02, (k, split[k])
        assert split[k]["sum"] == whole[k]["sum"], k  # rows are independent: bit for bit the same
