"""Packed-weight ops.  ``ops`` defines them (``torch.library``); ``reference``
is the pure-torch default backend; optional fast backends register
per-device implementations of the same ops."""
from . import ops  # noqa: F401  (defines torch.ops.onebit.*)

try:  # fast backends (C++ CPU built lazily on first call, Triton on CUDA); reference if anything fails
    from .dispatch import register_backends as _register_backends

    _register_backends()
    try:  # the Triton backend registers itself with dispatch (which never imports it)
        from . import triton as _triton

        _triton.register()
    except Exception as _e:  # a broken triton install must not break the package
        import logging as _logging

        _logging.getLogger("onebit.kernels").warning(
            "Triton kernels not registered (%s: %s)", type(_e).__name__, _e)
except Exception as _e:  # pragma: no cover - the reference must keep working
    import logging as _logging

    _logging.getLogger("onebit.kernels").warning(
        "onebit: fast kernels not registered (%s: %s); using the reference", type(_e).__name__, _e)
