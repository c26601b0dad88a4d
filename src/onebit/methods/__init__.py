"""Quantization methods: one module per method (config + math + handler).

Importing this package registers every built-in method.
"""
from . import onebit  # noqa: F401
