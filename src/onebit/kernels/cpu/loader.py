"""Build and load the C++ CPU kernels (``onebit_cpu*.cpp`` + ``quant_cpu*.cpp``, one extension) on first use.

``onebit_cpu.cpp`` / ``onebit_cpu_portable.cpp`` / ``onebit_cpu_avx2.cpp`` / ``onebit_cpu_avx512.cpp`` /
``onebit_cpu_i8lut.cpp`` / ``onebit_cpu_fixed.cpp`` / ``onebit_cpu_fixed_avx2.cpp`` / ``onebit_cpu_gemm.cpp`` (the batched GEMM path) / ``attention_cpu.cpp`` (decode_attention) /
``onebit_cpu.h`` hold the OneBit/ternary kernels (a pybind11 module: ``load().binary_linear``);
``quant_cpu.cpp`` / ``quant_cpu_simd.cpp`` / ``quant_cpu_vnni.cpp`` / ``quant_cpu_gemv8.cpp`` / ``quant_cpu.h`` the block-scaled formats (quant_linear,
block_sign_linear), registered with the
dispatcher when the library loads (:func:`quant_ops`: ``torch.ops.onebit_cpu_quant``).
``torch.utils.cpp_extension.load`` compiles the sources once (about 30-60 s with gcc, needs a C++
compiler and ninja) into a cache directory and reloads it in later processes:
``$ONEBIT_KERNEL_CACHE``, else ``$TORCH_EXTENSIONS_DIR/onebit``, else ``~/.cache/onebit/torch_extensions``
(one sub-directory per torch/Python version and SHA-256 of every source file and the compiler flags, so
checkouts with the same source share one build and different sources never rebuild each other's;
the source is built from a copy inside that directory, so every checkout's build command is the same).  If the build fails
(no compiler, no ninja, ...) :func:`load` logs one warning naming the cause and returns ``None``,
and the ops keep using the pure-torch reference.  ``ONEBIT_KERNEL=reference`` skips the build.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger("onebit.kernels")

SOURCE = Path(__file__).with_name("onebit_cpu.cpp")
PORTABLE_SOURCE = Path(__file__).with_name("onebit_cpu_portable.cpp")
AVX2_SOURCE = Path(__file__).with_name("onebit_cpu_avx2.cpp")
AVX512_SOURCE = Path(__file__).with_name("onebit_cpu_avx512.cpp")
I8LUT_SOURCE = Path(__file__).with_name("onebit_cpu_i8lut.cpp")
FIXED_SOURCE = Path(__file__).with_name("onebit_cpu_fixed.cpp")
FIXED_AVX2_SOURCE = Path(__file__).with_name("onebit_cpu_fixed_avx2.cpp")
GEMM_SOURCE = Path(__file__).with_name("onebit_cpu_gemm.cpp")
ATTENTION_SOURCE = Path(__file__).with_name("attention_cpu.cpp")
HEADER = Path(__file__).with_name("onebit_cpu.h")
QUANT_SOURCE = Path(__file__).with_name("quant_cpu.cpp")
QUANT_SIMD_SOURCE = Path(__file__).with_name("quant_cpu_simd.cpp")
QUANT_VNNI_SOURCE = Path(__file__).with_name("quant_cpu_vnni.cpp")
QUANT_GEMV8_SOURCE = Path(__file__).with_name("quant_cpu_gemv8.cpp")
QUANT_HEADER = Path(__file__).with_name("quant_cpu.h")
ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512"}

_lock = threading.Lock()
_state: dict = {"module": None, "error": None, "tried": False}


#: compiler flags.  -fopenmp: at::parallel_for is an inline `#pragma omp parallel` in the ATen
#: headers, so without it the kernels run single-threaded.  libgomp.so.1 resolves to the copy torch
#: has already loaded (same soname), so there is one OpenMP runtime and torch's thread count.
CFLAGS = ["-O3", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
NAME = "onebit_cpu"


def _base_dir() -> Path:
    if os.environ.get("ONEBIT_KERNEL_CACHE"):
        return Path(os.environ["ONEBIT_KERNEL_CACHE"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "onebit"
    return Path.home() / ".cache" / "onebit" / "torch_extensions"


def sources() -> list[Path]:
    """The translation units of the extension."""
    return [SOURCE, PORTABLE_SOURCE, AVX2_SOURCE, AVX512_SOURCE, I8LUT_SOURCE, FIXED_SOURCE, FIXED_AVX2_SOURCE,
            GEMM_SOURCE, ATTENTION_SOURCE,
            QUANT_SOURCE,
            QUANT_SIMD_SOURCE, QUANT_VNNI_SOURCE, QUANT_GEMV8_SOURCE]


def files() -> list[Path]:
    """Every file the build reads (the sources and the headers they share): hashed and copied."""
    return sources() + [HEADER, QUANT_HEADER]


def build_key() -> str:
    """SHA-256 (first 16 hex digits) of the C++ sources, the flags and the compiler."""
    h = hashlib.sha256()
    for src in files():
        h.update(hashlib.sha256(src.read_bytes()).digest())
    h.update(repr((CFLAGS, LDFLAGS, os.environ.get("CXX", ""))).encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{build_key()}"
    return _base_dir() / tag


def _built(d: Path) -> bool:
    return any(d.glob(f"{NAME}*.so")) or any(d.glob(f"{NAME}*.pyd"))


def _build():
    from torch.utils import cpp_extension

    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    for source in files():
        src = d / source.name  # the build reads this copy: the same path for every checkout
        code = source.read_bytes()
        if not src.is_file() or src.read_bytes() != code:
            tmp = d / f".{source.name}.{os.getpid()}"
            tmp.write_bytes(code)
            os.replace(tmp, src)
    copies = [str(d / source.name) for source in sources()]
    if not _built(d):
        log.info("building the CPU kernels in %s (first use only, ~30-60 s)", d)
    return cpp_extension.load(name=NAME, sources=copies, build_directory=str(d),
                              extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), verbose=False)


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


def quant_ops():
    """``torch.ops.onebit_cpu_quant`` (quant_linear, block_sign_linear, best_isa) once the extension
    is loaded; ``None`` if it cannot be built."""
    if load() is None:
        return None
    return torch.ops.onebit_cpu_quant


def loaded() -> bool:
    return _state["module"] is not None


def build_error() -> str | None:
    """Why the build failed (``None`` if it did not fail or was not tried)."""
    return _state["error"]
