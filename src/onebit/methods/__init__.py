"""Quantization methods: one module per method (config + math + handler).

Importing this package registers every built-in method.
"""
from . import onebit  # noqa: F401
from . import bitnet, gptq, q1, rtn  # noqa: F401,E401  (rtn, gptq, bitnet, ternary, onebit-w1a8, q1_0)
