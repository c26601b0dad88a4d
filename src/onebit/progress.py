"""Progress bars: tqdm on a terminal, plain lines where stderr is not one (CI logs, ``| tee``).

Every progress bar in onebit is a :class:`Progress`, a ``tqdm.auto.tqdm`` subclass that behaves as
tqdm does unless *plain lines* are on (:func:`set_plain_lines`; the CLI turns them on when stderr
is not a terminal and ``--progress`` is not given).  Then a bar prints, instead of redrawing
itself, at most one line every :data:`PLAIN_INTERVAL` seconds::

    onebit: quantize [onebit]: 120/400 (30%), 2m10s elapsed, ~5m03s left

and a last line when it closes, if it printed any: a command that takes minutes says so in a
log, and a short one prints nothing.  ``$ONEBIT_PROGRESS_INTERVAL`` sets the interval (seconds).
"""
from __future__ import annotations

import math
import os
import sys
import time

import tqdm.auto as _tqdm_auto

#: seconds between two plain lines of one bar
PLAIN_INTERVAL = 30.0

_state: dict = {"plain": False, "interval": None}


def set_plain_lines(plain: bool, interval: float | None = None) -> dict:
    """Turn plain progress lines on or off (``interval``: seconds between lines; default
    ``$ONEBIT_PROGRESS_INTERVAL`` or :data:`PLAIN_INTERVAL`).  Returns the previous setting, to
    pass back as keywords."""
    prev = dict(_state)
    _state.update(plain=bool(plain), interval=interval)
    if plain:
        route_tqdm_auto()
    return prev


def _interval() -> float:
    if _state["interval"] is not None:
        return float(_state["interval"])
    try:
        return max(0.0, float(os.environ.get("ONEBIT_PROGRESS_INTERVAL", PLAIN_INTERVAL)))
    except ValueError:
        return PLAIN_INTERVAL


def fmt_seconds(s: float) -> str:
    s = int(s) if math.isfinite(s) else 0
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_count(n) -> str:
    return str(int(n)) if float(n).is_integer() else f"{n:.4g}"


class _Discard:
    """Where tqdm's own drawing goes while plain lines are on."""

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class Progress(_tqdm_auto.tqdm):
    """``tqdm.auto.tqdm``, or plain lines (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        self._plain = _state["plain"] and not kwargs.get("disable", False)
        if self._plain:
            self._plain_out = sys.stderr
            self._plain_every = _interval()
            self._plain_last = time.monotonic()
            self._plain_lines = 0
            self._plain_last_n = None
            self._plain_closing = False
            kwargs["file"] = _Discard()
        super().__init__(*args, **kwargs)

    def plain_line(self) -> str:
        d = self.format_dict
        n, total, elapsed = d["n"], d["total"], d["elapsed"]
        desc = (d.get("prefix") or "progress").rstrip(": ")
        if total:
            done = f"{_fmt_count(n)}/{_fmt_count(total)} ({100 * n / total:.0f}%)"
        else:
            done = f"{_fmt_count(n)} {d.get('unit') or 'it'}"
        line = f"onebit: {desc}: {done}, {fmt_seconds(elapsed)} elapsed"
        if total and 0 < n < total and elapsed > 0:
            line += f", ~{fmt_seconds(elapsed * (total - n) / n)} left"
        if d.get("postfix"):
            line += f", {d['postfix']}"
        return line

    def _emit(self) -> None:
        try:
            self._plain_out.write(self.plain_line() + "\n")
            self._plain_out.flush()
        except (ValueError, OSError):  # stderr closed
            return
        self._plain_lines += 1
        self._plain_last = time.monotonic()
        self._plain_last_n = self.n

    def display(self, msg=None, pos=None):
        if not getattr(self, "_plain", False):
            return super().display(msg, pos)
        if msg is None and not self._plain_closing and self.n != self._plain_last_n \
                and time.monotonic() - self._plain_last >= self._plain_every:
            self._emit()
        return True

    def close(self):
        plain = getattr(self, "_plain", False)
        was_open = not getattr(self, "disable", True)
        if plain:
            self._plain_closing = True
        super().close()
        if plain and was_open and self._plain_lines and self.n != self._plain_last_n:
            self._emit()  # the bar's end, since it said something before


def route_tqdm_auto() -> None:
    """Make ``tqdm.auto.tqdm`` a :class:`Progress` too, for bars made by code that imports it
    itself (and so does not go through this module); without plain lines it is the same bar."""
    if _tqdm_auto.tqdm is not Progress and issubclass(Progress, _tqdm_auto.tqdm):
        _tqdm_auto.tqdm = Progress
