"""Helpers shared by the subcommands: logging, model loading, output."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from ..fileio import write_text_atomic  # noqa: F401  (the CLI writers use it from here)
from ..errors import OneBitError

log = logging.getLogger("onebit")


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onebit: %(message)s"))
    root = logging.getLogger("onebit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    # transformers' own chatter (progress bars for loading weights, warnings) stays quiet: through
    # the environment it reads when imported (importing it here would cost every command, even one
    # that fails at once, seconds), or directly when something imported it already
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except Exception:
            pass


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags every subcommand takes."""
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and results")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.add_argument("--progress", action="store_true",
                   help="tqdm progress bars even when stderr is not a terminal (there, by default: "
                   "a plain progress line at most every 30 s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's, fewer when other processes keep CPUs busy "
                   "at start; OMP_NUM_THREADS is honoured; docs/threads.md)")


def progress_enabled(args: argparse.Namespace) -> bool:
    """Bars on a terminal, plain lines elsewhere (``main`` sets which); none with ``-q``."""
    return not getattr(args, "quiet", False) or getattr(args, "progress", False)


def add_dtype_arg(p: argparse.ArgumentParser, default: str = "auto", help: str | None = None) -> None:
    p.add_argument("--dtype", default=default, choices=["auto", "float32", "float16", "bfloat16"],
                   help=help or "dtype to load the model in (default: %(default)s = as stored)")


#: ``--dtype`` help of the commands that evaluate (their default is float32)
EVAL_DTYPE_HELP = ("dtype to evaluate in (default: %(default)s: onebit evaluates on the CPU, where "
                   "float16/bfloat16 math is many times slower; auto = as stored)")


#: ``--seqlen`` help, the same in every command that takes it
SEQLEN_HELP = "0 = the model's context, capped at 2048; otherwise at least 2 (default: %(default)s)"


def seqlen_type(text: str) -> int:
    """``--seqlen``: a window of at least 2 tokens, or 0 for the model's context (capped at 2048;
    the same as omitting the flag where its default is the context).  1 and negative numbers are
    argument errors."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens, got '{text}'")
    if v != 0 and v < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 tokens, or 0 for the model's context "
                                         f"(capped at 2048), got {v}")
    return v


def one_line(text) -> str:
    """An error message as one line: whitespace (newlines included) collapsed."""
    return " ".join(str(text).split())


#: a hub id: 'name' or 'org/name' (onebit.models._HUB_ID; repeated here so that this check runs before
#: torch and transformers are imported)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_paths_exist(*specs: str | None) -> None:
    """A model spec that is clearly a local path (not shaped like a hub id 'org/name') and does not
    exist: the one-line error at once, before the command imports torch (onebit quantize /nope x)."""
    for spec in specs:
        if spec is None or Path(spec).expanduser().exists():
            continue
        if spec.startswith((".", "~")) or not _HUB_ID.match(spec):
            raise OneBitError(f"model path '{spec}' does not exist")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=float) + "\n")


