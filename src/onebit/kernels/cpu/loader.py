"""Build and load the C++ CPU kernels (``onebit_cpu.cpp``) on first use.

``torch.utils.cpp_extension.load`` compiles the source once (about 30-60 s with gcc, needs a C++
compiler and ninja) into a cache directory and reloads it in later processes:
``$ONEBIT_KERNEL_CACHE``, else ``$TORCH_EXTENSIONS_DIR/onebit``, else ``~/.cache/onebit/torch_extensions``
(one sub-directory per torch/Python version; a changed source rebuilds).  If the build fails
(no compiler, no ninja, ...) :func:`load` logs one warning naming the cause and returns ``None``,
and the ops keep using the pure-torch reference.  ``ONEBIT_KERNEL=reference`` skips the build.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger("onebit.kernels")

SOURCE = Path(__file__).with_name("onebit_cpu.cpp")
ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512"}

_lock = threading.Lock()
_state: dict = {"module": None, "error": None, "tried": False}


def cache_dir() -> Path:
    if os.environ.get("ONEBIT_KERNEL_CACHE"):
        base = Path(os.environ["ONEBIT_KERNEL_CACHE"])
    elif os.environ.get("TORCH_EXTENSIONS_DIR"):
        base = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "onebit"
    else:
        base = Path.home() / ".cache" / "onebit" / "torch_extensions"
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}"
    return base / tag


def _build():
    from torch.utils import cpp_extension

    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    log.info("building the CPU kernels in %s (first use only, ~30-60 s)", d)
    return cpp_extension.load(
        name="onebit_cpu", sources=[str(SOURCE)], build_directory=str(d),
        # -fopenmp: at::parallel_for is an inline `#pragma omp parallel` in the ATen headers, so
        # without it the kernels run single-threaded.  libgomp.so.1 resolves to the copy torch has
        # already loaded (same soname), so there is one OpenMP runtime and torch's thread count.
        extra_cflags=["-O3", "-fno-math-errno", "-fopenmp"], extra_ldflags=["-fopenmp"],
        verbose=False)


def load():
    """The compiled module, building it on first call; ``None`` if it cannot be built."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if not _state["tried"]:
            try:
                _state["module"] = _build()
            except Exception as e:  # compiler missing, ninja missing, compile error, ...
                msg = str(e).strip().splitlines()
                _state["error"] = f"{type(e).__name__}: {msg[-1] if msg else ''}"
                log.warning("could not build the C++ CPU kernels (%s); "
                            "using the pure-torch reference kernels", _state["error"])
            _state["tried"] = True
    return _state["module"]


def loaded() -> bool:
    return _state["module"] is not None


def build_error() -> str | None:
    """Why the build failed (``None`` if it did not fail or was not tried)."""
    return _state["error"]


def _reset_for_tests(module=None, error=None, tried=False) -> None:
    _state.update(module=module, error=error, tried=tried)
