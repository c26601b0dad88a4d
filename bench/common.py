"""Helpers shared by the kernel/decode benchmarks: machine description, timing, copy bandwidth."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch

FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512vbmi", "avx_vnni", "avx512_bf16", "amx_tile")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def llc_bytes() -> int:
    """Size of the largest CPU cache (bytes); 32 MiB if unknown."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in os.listdir(base):
            if d.startswith("index"):
                s = open(f"{base}/{d}/size").read().strip()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
                best = max(best, int(s.rstrip("KM")) * mult)
    except OSError:
        pass
    return best or 32 << 20


def machine(device: str = "cpu") -> str:
    """One paragraph: CPU model, cores, flags, threads, torch, load (the CPU may be shared)."""
    from onebit.kernels import dispatch

    lines = [f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, flags: {' '.join(cpu_flags())}, "
             f"LLC {llc_bytes() >> 20} MiB",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"onebit backend on {device}: {dispatch.backend(device)}"]
    if device == "cuda" and torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name()}")
    try:
        lines.append("load average at start: " + " ".join(open("/proc/loadavg").read().split()[:3]))
    except OSError:
        pass
    return "\n".join(lines)


def machine_line() -> str:
    """One line: CPU model, cores, torch and its threads, the current 1-minute load average."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load:.1f}")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], repeats: int, device: str = "cpu", warmup: int = 2,
           min_time: float = 0.0) -> float:
    """Median seconds per call over ``repeats`` calls (after ``warmup``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    t_end = time.perf_counter() + min_time
    while len(ts) < repeats or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def copy_bandwidth(device: str = "cpu", nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written), ``dst.copy_(src)``."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), repeats, device)
    return 2 * nbytes / t / 1e9


def rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 if unknown."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
