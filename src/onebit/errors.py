"""User-facing errors.

Every problem a user can cause (bad path, bad flag, corrupt file) is raised as
:class:`OneBitError` with a one-line message that names the file, tensor or
flag.  The CLI prints it as ``onebit: error: <message>`` and exits with code 2;
library users can catch it like any ``ValueError``.
"""
from __future__ import annotations


class OneBitError(ValueError):
    """A problem with the user's input, reported as one line."""

    exit_code = 2

    def __init__(self, message: str):
        # keep it one line, whatever the caller passed in
        super().__init__(" ".join(str(message).split()))


class CheckpointError(OneBitError):
    """A checkpoint that is missing, truncated, corrupt or from an unknown format version."""


def first_line(e: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message, for a one-line error that wraps it (``empty``, or
    the exception's type name, when the message is blank)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else (type(e).__name__ if empty is None else empty)
