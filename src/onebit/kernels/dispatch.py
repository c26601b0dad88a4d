"""Backend selection for the packed ops.

The ops ``torch.ops.onebit.binary_linear`` / ``ternary_linear`` / ``quant_linear`` /
``block_sign_linear`` default to the pure-torch reference (kernels/reference.py).  Device kernels
are added with ``torch.library.register_kernel`` through :func:`register_backend` (a backend
registers any subset of the ops; the others keep the reference on that device):

* ``cpu``: the C++ kernels (kernels/cpu), JIT-built on the first call, registered by
  :func:`register_backends` for all four ops; if the build fails, for a dtype they do not take, or
  (quant_linear) for bits other than 2, 4, 8, the same registered function calls the reference
  (one logged warning for a failed build).  ``ONEBIT_CPU_QMM_THRESHOLD``: batch rows from which
  quant_linear / block_sign_linear dequantize blocks of rows and call a BLAS GEMM instead of their
  GEMV (default :data:`QUANT_MM_THRESHOLD`).
* ``cuda``: the Triton kernels (kernels/triton), which register themselves
  (``onebit.kernels.triton.register``, called by ``import onebit.kernels``) only when triton
  imports and CUDA is available.  This module never imports a backend other than the C++ one.

Environment (read on every call, so benchmarks and tests can switch; parsed once per value):

* ``ONEBIT_KERNEL``: ``auto`` (default: fast backend where available), ``reference`` (force the
  pure-torch path everywhere).
* ``ONEBIT_CPU_ISA``: ``auto`` | ``avx512`` | ``avx2`` | ``scalar`` (caps the C++ path; a level
  this CPU lacks falls back to the best it has).
* ``ONEBIT_CPU_ALGO``: ``simd`` (default) | ``lut`` (T-MAC style table GEMV) | ``kmask``
  (AVX-512 mask-register xor) | ``psum`` (AVX-512 masked sum on centred x; the fp32 default on
  Intel CPUs) | ``fxlut`` (x in 24-bit fixed point, int32 tables per 4 columns (AVX-512) or 3
  columns (AVX2) looked up by vpermd over a cached transposed copy of the bits; exact integer
  sums; the default for every dtype on AVX-512 and AVX2 CPUs other than Intel's, e.g. AMD Zen,
  on AVX2 at every batch size) | ``fx`` (the same fixed point
  as int8 digit planes, AVX512-VNNI + VBMI; no extra memory) |
  ``shift`` (AVX-512 vpsllvd + vpternlogd; the fp32 default on other CPUs, and for
  every dtype without AVX512-BF16) | ``bf16dp``
  (AVX512-BF16 dot products; the default for bf16/fp16 inputs on Intel) | ``i8`` (x quantized to int8
  per block of 128 on the fly, any ISA, AVX512-VNNI where present; not exact, opt-in) | ``table`` (AVX2 ±1 table + FMA; the
  AVX2 default on Intel) | ``xor`` / ``blend`` (AVX2 exact sign flip of x by xor / by vblendvps), for
  measurements.
* ``ONEBIT_CPU_MM_THRESHOLD``: batch rows from which the C++ path expands tiles of the packed
  weight and calls a BLAS GEMM instead of the direct kernel (default ``-1``: per ISA, AVX2 from a
  measured batch size on Intel and never with ``fxlut``, AVX-512 from 32 fp32 / 8 bf16-fp16 rows on
  Intel, with ``fxlut`` never for fp32 and from 256 bf16-fp16 rows, scalar never; docs/kernels.md).
"""
from __future__ import annotations

import logging
import os

import torch
from torch.autograd import profiler as _autograd_profiler

from .cpu import ISA_NAMES, loader
from .reference import (binary_linear_ref, block_sign_linear_ref, decode_attention_ref, quant_linear_ref,
                        ternary_linear_ref)

log = logging.getLogger("onebit.kernels")

_ISA = {"auto": -1, "avx512": 2, "avx2": 1, "scalar": 0}
_ALGO = {"simd": 0, "lut": 1, "kmask": 2, "psum": 3, "shift": 4, "bf16dp": 5,
         "i8": 6, "table": 7, "xor": 8, "blend": 9, "fx": 10, "fxlut": 11}
_registered: dict[str, str] = {}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default).strip().lower() or default


def _env_reader():
    """``raw(name)``: the environment variable's raw value (None when unset), for the per-call checks
    below.  ``os.environ.get`` encodes the name and decodes the value on every call (four
    reads per packed call, ~180 calls a decode step), so on CPython this reads os.environ's own dict
    (which its __setitem__ / __delitem__ keep current) with the names encoded once; values are
    compared raw and parsed only when they change.  Elsewhere: ``os.environ.get``."""
    data, enc = getattr(os.environ, "_data", None), getattr(os.environ, "encodekey", None)
    if not isinstance(data, dict) or enc is None:
        return os.environ.get
    keys: dict[str, object] = {}

    def raw(name: str):
        k = keys.get(name)
        if k is None:
            k = keys[name] = enc(name)
        return data.get(k)

    return raw


_raw = _env_reader()


def forced_reference() -> bool:
    if _raw("ONEBIT_KERNEL") is None:  # the common case, on every call: one dict lookup
        return False
    v = os.environ.get("ONEBIT_KERNEL", "").strip().lower() or "auto"
    if v not in ("auto", "reference"):
        raise ValueError(f"ONEBIT_KERNEL must be 'auto' or 'reference', got {v!r}")
    return v == "reference"


_parsed: dict[tuple, tuple[int, int, int]] = {}  # raw environment values -> cpu_params()


def cpu_params() -> tuple[int, int, int]:
    """(isa, mm_threshold, algo) for the C++ kernels, from the environment (read on every call,
    parsed once per distinct value: this runs ~150 times per decode step)."""
    key = (_raw("ONEBIT_CPU_ISA"), _raw("ONEBIT_CPU_ALGO"), _raw("ONEBIT_CPU_MM_THRESHOLD"))
    hit = _parsed.get(key)
    if hit is None:
        hit = _parsed[key] = _parse_cpu_params()
    return hit


def _parse_cpu_params() -> tuple[int, int, int]:
    isa, algo = _env("ONEBIT_CPU_ISA", "auto"), _env("ONEBIT_CPU_ALGO", "simd")
    if isa not in _ISA:
        raise ValueError(f"ONEBIT_CPU_ISA must be one of {sorted(_ISA)}, got {isa!r}")
    if algo not in _ALGO:
        raise ValueError(f"ONEBIT_CPU_ALGO must be one of {sorted(_ALGO)}, got {algo!r}")
    thr = int(os.environ.get("ONEBIT_CPU_MM_THRESHOLD", "-1"))  # -1: the kernel's per-ISA default
    return _ISA[isa], thr, _ALGO[algo]


def _cpu_module():
    if forced_reference():
        return None
    return loader.load()


def _cpu_ok(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float32, torch.bfloat16, torch.float16)


def binary_linear_cpu(x, packed, g, h, in_features):
    mod = _cpu_module()
    if mod is None or not _cpu_ok(x):
        return binary_linear_ref(x, packed, g, h, in_features)
    isa, thr, algo = cpu_params()
    return mod.binary_linear(x, packed, g, h, in_features, isa, thr, algo)


def ternary_linear_cpu(x, packed, scale, in_features):
    mod = _cpu_module()
    if mod is None or not _cpu_ok(x):
        return ternary_linear_ref(x, packed, scale, in_features)
    isa, thr, _ = cpu_params()
    return mod.ternary_linear(x, packed, scale, in_features, isa, thr)


_best_isa: list[int] = []  # the CPU's best ISA, asked of the module once


def _used_isa(mod, isa: int) -> int:
    """The ISA the C++ kernels run for a requested ``isa`` (-1 auto): the CPU's best, capped."""
    if not _best_isa:
        _best_isa.append(mod.best_isa())
    best = _best_isa[0]
    return best if isa < 0 or isa > best else isa


def decode_attention_cpu(q, kt, v, scale):
    """The AVX-512 or AVX2 kernel (attention_cpu.cpp) for float32 and head_dim a multiple of 16;
    else (and on the scalar ISA) the reference."""
    mod = _cpu_module()
    ok = (mod is not None and q.dtype == kt.dtype == v.dtype == torch.float32 and q.shape[-1] % 16 == 0
          and kt.dim() == 3 and kt.shape[-1] > 0 and kt.stride(-1) == 1 and v.stride(-1) == 1)
    isa = _used_isa(mod, cpu_params()[0]) if ok else 0
    if isa not in (_ISA["avx512"], _ISA["avx2"]):
        return decode_attention_ref(q, kt, v, scale)
    return mod.decode_attention(q, kt, v, scale, isa)


#: batch rows from which the quant ops take their GEMM path (dequantized row blocks + BLAS)
#: instead of the GEMV; ``python bench/quant_kernels.py`` measures the crossover
QUANT_MM_THRESHOLD = 32
_QUANT_BITS = (2, 4, 8)


def quant_mm_threshold() -> int:
    v = _raw("ONEBIT_CPU_QMM_THRESHOLD")
    return QUANT_MM_THRESHOLD if v is None else int(os.environ["ONEBIT_CPU_QMM_THRESHOLD"])


def _quant_ops():
    if forced_reference():
        return None
    return loader.quant_ops()


def quant_linear_cpu(x, packed, scale, zero, bits, group_size, in_features):
    ops = _quant_ops()
    if ops is None or not _cpu_ok(x) or bits not in _QUANT_BITS:
        return quant_linear_ref(x, packed, scale, zero, bits, group_size, in_features)
    isa, _, algo = cpu_params()
    return ops.quant_linear(x, packed, scale, zero, bits, group_size, in_features, isa,
                            quant_mm_threshold(), algo)


def block_sign_linear_cpu(x, packed, scales, group_size, in_features):
    ops = _quant_ops()
    if ops is None or not _cpu_ok(x):
        return block_sign_linear_ref(x, packed, scales, group_size, in_features)
    return ops.block_sign_linear(x, packed, scales, group_size, in_features, cpu_params()[0],
                                 quant_mm_threshold())


def backend(device: str | torch.device = "cpu") -> str:
    """Name of the backend a call on ``device`` uses now (building the CPU kernels if needed)."""
    dev = torch.device(device).type
    if forced_reference() or dev not in _registered:
        return "reference"
    if dev == "cpu":
        mod = _cpu_module()
        if mod is None:
            return "reference"
        isa, _, algo = cpu_params()
        use = _used_isa(mod, isa)
        name = {v: k for k, v in _ALGO.items()}[algo]
        return f"cpu-{ISA_NAMES[use]}" + ("" if algo == 0 else f"-{name}")
    return _registered[dev]


#: the packed ops a backend may register kernels for
OPS = ("binary_linear", "ternary_linear", "quant_linear", "block_sign_linear", "decode_attention")
_kernels: dict[tuple[str, str], str] = {}  # (device, op) -> backend name
_kernel_fns: dict[tuple[str, str], object] = {}  # (device, op) -> the function registered


def register_backend(device: str, name: str, binary_linear=None, ternary_linear=None, **kernels) -> None:
    """Make the given functions (the ops' signatures; keywords named after :data:`OPS`, any subset)
    the ``device`` kernels of those ops, reported as backend ``name``.  Idempotent: an op keeps
    the first kernel registered for it on a device; ops given no kernel keep the reference."""
    given = {"binary_linear": binary_linear, "ternary_linear": ternary_linear, **kernels}
    unknown = sorted(set(given) - set(OPS))
    if unknown:
        raise ValueError(f"unknown packed ops {unknown}; known: {list(OPS)}")
    for op, fn in given.items():
        if fn is None or (device, op) in _kernels:
            continue
        torch.library.register_kernel(f"onebit::{op}", device, fn)
        _kernels[(device, op)] = name
        _kernel_fns[(device, op)] = fn
    _registered.setdefault(device, name)


def direct_kernel(op: str, device: str = "cpu"):
    """The function registered as ``op``'s kernel on ``device`` (None if none), for a caller that
    may skip the dispatcher: ``torch.ops.onebit.<op>`` reaches it through the dispatcher, the
    Python trampoline and torch.library's dynamo guard, ~180 times a decode
    step.  Only outside autograd and torch.compile, with tensors on ``device``
    (``generate.LlamaRuntime``'s decode loop).  Under ``torch.profiler`` each call is recorded as
    ``onebit::<op>``, as a call through the dispatcher is (``bench/decode.py --profile``)."""
    if forced_reference():
        return None
    fn = _kernel_fns.get((device, op))
    if fn is None:
        return None
    name = f"onebit::{op}"

    def call(*args):
        if _autograd_profiler._is_profiler_enabled:  # under torch.profiler: recorded as the op is
            with torch.profiler.record_function(name):
                return fn(*args)
        return fn(*args)

    return call


def registered_kernels(device: str) -> dict[str, str]:
    """{op: backend name} of the ops with a registered kernel on ``device``."""
    return {op: n for (dev, op), n in _kernels.items() if dev == device}


def register_backends() -> dict[str, str]:
    """Register the C++ CPU kernels (idempotent); returns {device: backend} of every backend
    registered so far (``cuda`` too once the Triton backend has registered itself)."""
    register_backend("cpu", "cpu", binary_linear_cpu, ternary_linear_cpu,
                     quant_linear=quant_linear_cpu, block_sign_linear=block_sign_linear_cpu,
                     decode_attention=decode_attention_cpu)
    return dict(_registered)
