"""Triton (GPU) backend of the packed ops; importable without triton (``available()`` is False).

:func:`register` makes it the ``cuda`` backend of the ops (``onebit.kernels`` calls it).
"""
from __future__ import annotations

import torch

from ..dispatch import register_backend


def available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def binary_linear_triton(x, packed, g, h, in_features):
    from .packed_linear import binary_linear_triton as f

    return f(x, packed, g, h, in_features)


def ternary_linear_triton(x, packed, scale, in_features):
    from .packed_linear import ternary_linear_triton as f

    return f(x, packed, scale, in_features)


def register() -> bool:
    """Register these kernels for ``cuda`` when triton imports and CUDA is available; True if so."""
    if available() and torch.cuda.is_available():
        register_backend("cuda", "triton", binary_linear_triton, ternary_linear_triton)
        return True
    return False
