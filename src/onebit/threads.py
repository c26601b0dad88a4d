"""onebit's CPU thread policy: fast on idle machines, not collapsing on busy ones.

Applied once, by ``apply_policy()`` at the top of ``onebit/__init__.py``, before anything imports
torch (libgomp, torch's OpenMP runtime, reads its environment when torch is imported).  Two parts,
each skipped where the user said otherwise (see docs/threads.md for the measurements):

1. Shorter OpenMP spin, unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set, chosen as torch is
   imported: ``GOMP_SPINCOUNT=1000`` when other processes keep CPUs busy then, else 10000.
   libgomp's default lets an idle worker spin ~300 000 pause instructions (milliseconds) before it
   sleeps; on a busy CPU those spinners burn the time slices the thread they wait for needs, and
   every small parallel region waits a scheduler tick.  1000 is the value libgomp itself uses when
   it knows the CPUs are oversubscribed; on an idle machine it costs 1.4-2.4x (every region's workers
   fall asleep and must be woken), which 10000 avoids while still bounding the spin if a load
   arrives after the start (bench/results/busy_spin.log).
2. Threads for the free CPUs: when other processes keep CPUs busy as torch is imported (run queue sampled
   from /proc/loadavg), ``torch.set_num_threads(max(1, cpus - busy))`` unless ``OMP_NUM_THREADS``
   is set.  An idle machine keeps torch's default.

An explicit ``--threads N`` (CLI) or ``torch.set_num_threads`` after ``import onebit`` wins, as
they come later.  ``ONEBIT_THREAD_POLICY=off`` turns the policy off (for benchmarks).  If torch
was imported before onebit, nothing is changed (the environment is read already, and a thread
count may be the user's).
"""
from __future__ import annotations

import os
import sys
import time

SPINCOUNT = "10000"       # CPUs idle as torch is imported
SPINCOUNT_BUSY = "1000"   # other processes keep CPUs busy as torch is imported
ENV_OFF = "ONEBIT_THREAD_POLICY"

#: what apply_policy decided: None until it ran; then a dict (see ``apply_policy``)
POLICY: dict | None = None


def cpus() -> int:
    """CPUs this process may run on (affinity), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cpus(samples: int = 8, interval: float = 0.002) -> int:
    """CPUs kept busy by other processes now: the median of the kernel's count of runnable tasks
    (``/proc/loadavg``, 4th field, which includes this process) minus this process.  0 where
    unknown.  The 1-minute load average is not used: it still holds finished jobs (a pip install
    just before) and misses ones started seconds ago."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    counts.sort()
    return max(0, counts[len(counts) // 2])


def apply_policy() -> dict:
    """Apply the policy once per process (later calls return the first decision).  Imports no
    torch: the thread count is chosen when torch is first imported (``_AfterTorch``)."""
    global POLICY
    if POLICY is not None:
        return POLICY
    env = os.environ
    rec = {"spincount": None, "threads": None, "busy": None, "cpus": cpus(), "reason": ""}
    POLICY = rec
    if env.get(ENV_OFF, "").lower() in ("off", "0", "no", "false"):
        rec["reason"] = f"{ENV_OFF}=off"
    elif "torch" in sys.modules:
        rec["reason"] = "torch was imported before onebit: left as it is"
    else:
        if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
            rec["reason"] = "OMP_WAIT_POLICY/GOMP_SPINCOUNT set by the user"
        else:
            rec["spincount"] = "at torch's import"
        sys.meta_path.insert(0, _AfterTorch())
    return rec


def _choose_spin() -> None:
    """Right before torch's import (libgomp reads its environment then): the spin count for the
    CPUs' state now."""
    rec = POLICY
    if rec["spincount"] is None:       # the user's OMP_WAIT_POLICY / GOMP_SPINCOUNT
        return
    rec["busy"] = busy_cpus()
    value = SPINCOUNT_BUSY if rec["busy"] else SPINCOUNT
    os.environ["GOMP_SPINCOUNT"] = value
    rec["spincount"] = int(value)


def _choose_threads() -> None:
    """Right after torch's import: fewer threads when other processes keep CPUs busy."""
    rec = POLICY
    if "OMP_NUM_THREADS" in os.environ:
        rec["reason"] = "; ".join(filter(None, [rec["reason"], "OMP_NUM_THREADS set by the user"]))
        return
    import torch

    if rec["busy"] is None:            # sampled once, before torch's import, when the spin was chosen
        rec["busy"] = busy_cpus()
    default = torch.get_num_threads()
    n = max(1, min(default, rec["cpus"] - rec["busy"]))
    if n != default:
        torch.set_num_threads(n)
        rec["threads"] = n


class _AfterTorch:
    """A ``sys.meta_path`` finder that runs ``_choose_spin`` right before and ``_choose_threads`` right
    after torch is imported (once), so that ``import onebit`` itself stays free of torch."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_choose(module):
            _choose_spin()
            exec_module(module)
            _choose_threads()

        spec.loader.exec_module = exec_then_choose  # this spec's loader only
        return spec


def set_threads(n: int) -> None:
    """An explicit thread count (``--threads``): wins over the policy."""
    from .errors import OneBitError

    if n < 1:
        raise OneBitError(f"--threads must be at least 1, got {n}")
    import torch

    torch.set_num_threads(n)


def describe() -> str:
    """One line: what the policy did and the threads torch uses now."""
    import torch

    p = POLICY or {}
    parts = [f"torch threads {torch.get_num_threads()} of {cpus()} CPUs"]
    if p.get("spincount") is not None:
        parts.append(f"GOMP_SPINCOUNT={p['spincount']}")
    if p.get("busy"):
        parts.append(f"{p['busy']} CPUs busy at start")
    if p.get("reason"):
        parts.append(p["reason"])
    return ", ".join(parts)
