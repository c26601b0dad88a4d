"""Packed-weight ops.  ``ops`` defines them (``torch.library``); ``reference``
is the pure-torch default backend; optional fast backends register
per-device implementations of the same ops."""
from . import ops  # noqa: F401  (defines torch.ops.onebit.*)

try:  # fast backends (C++ CPU built lazily on first call, Triton on CUDA); reference if anything fails
    from .dispatch import register_backends as _register_backends

    _register_backends()
except Exception as _e:  # pragma: no cover - the reference must keep working
    import logging as _logging

    _logging.getLogger("onebit.kernels").warning(
        "onebit: fast kernels not registered (%s: %s); using the reference", type(_e).__name__, _e)
