"""Quantization methods: one module per method (config + math + handler).

Importing this package imports no method: :func:`load_builtins` does, and the registry calls it on
its first lookup (so ``onebit.methods.svid`` and the other math modules import without the methods
that build ``onebit.nn`` modules from them).
"""
from __future__ import annotations

import importlib

#: the modules that register the built-in methods (rtn, gptq, awq, nf4, llm-int8, bitnet, ternary, onebit,
#: onebit-w1a8, q1_0)
BUILTIN_MODULES = ("onebit", "bitnet", "gptq", "q1", "rtn", "awq", "nf4", "llm_int8",
                   "mos", "rank")  # onebit-mos, onebit-rank (issue 18)
BUILTIN_MODULES += ("smoothquant",)  # SmoothQuant W8A8 (issue 21)


def load_builtins() -> None:
    """Import every built-in method module (each registers itself with :mod:`onebit.registry`)."""
    for name in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{name}")
