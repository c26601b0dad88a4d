"""``onebit`` — compress a causal LM to ~1 bit per weight, evaluate it, run it.

Each subcommand lives in its own module exposing ``register(subparsers)``,
which adds its parser and sets ``func``.  Add a subcommand by adding its
module name to ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import OneBitError
from .common import add_common, one_line, setup_logging  # noqa: F401  (add_common lived here)

SUBCOMMANDS = ["quantize", "distill", "finetune", "export", "eval", "compare", "generate", "info", "demo"]

EPILOG = """examples:
  onebit demo                                   quantize the default model, evaluate, generate
  onebit quantize ../shared/models/stories3M out/s3m-1bit --method onebit
  onebit distill ../shared/models/stories3M out/s3m-kd --eval-data tinystories
  onebit info out/s3m-1bit                      bit ledger of a packed checkpoint
  onebit eval ppl out/s3m-1bit --data wikitext2
  onebit generate out/s3m-1bit --prompt "Once upon a time"
"""


class OneBitArgumentParser(argparse.ArgumentParser):
    """Argument errors as one line, ``onebit: error: <message>``, exit 2 (not the whole usage).
    Subparsers are made by ``type(parent)``, so every subcommand and sub-subcommand has it."""

    def error(self, message: str):
        self.exit(2, f"onebit: error: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = OneBitArgumentParser(
        prog="onebit", description="Compress a Hugging Face causal LM to about one bit per weight "
        "(OneBit, BitNet, RTN, GPTQ), evaluate it honestly and run it packed.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"onebit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneBitArgumentParser)
    sub.required = True
    for name in SUBCOMMANDS:
        mod = importlib.import_module(f"onebit.cli.{name.replace('-', '_')}")
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..progress import set_plain_lines

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0))
    # stderr not a terminal (CI logs, | tee): progress as a plain line every 30 s, not silence
    prev = set_plain_lines(not sys.stderr.isatty() and not getattr(args, "progress", False))
    try:
        if getattr(args, "threads", None) is not None:  # explicit: wins over the thread policy
            from ..threads import set_threads

            set_threads(args.threads)
        rc = args.func(args)
    except OneBitError as e:
        print(f"onebit: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onebit: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permission denied, ...: outputs are atomic, nothing half-written
        print(f"onebit: error: {one_line(e)}", file=sys.stderr)
        return 2
    finally:
        set_plain_lines(**prev)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
