"""Packed-weight ops.  ``ops`` defines them (``torch.library``); ``reference``
is the pure-torch default backend; optional fast backends register
per-device implementations of the same ops."""
from . import ops  # noqa: F401  (defines torch.ops.onebit.*)
