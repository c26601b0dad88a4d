"""Triton (GPU) backend of the packed ops; importable without triton (``available()`` is False)."""
from __future__ import annotations


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
