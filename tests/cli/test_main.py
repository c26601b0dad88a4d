"""The ``onebit`` entry point: argument errors are one line, for every subcommand."""
import subprocess
import sys

import pytest

from onebit.cli.main import SUBCOMMANDS, build_parser


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", *args], capture_output=True, text=True,
                       timeout=300)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("args,want", [
    (["quantize", "--dtype", "float8", "a", "b"], ["--dtype", "float8", "'float32'", "'bfloat16'"]),
    (["quantize", "a"], ["required", "OUT"]),
    (["eval", "ppl", "m", "--no-such-flag"], ["--no-such-flag"]),
    (["eval", "nope"], ["'nope'", "ppl"]),
    (["nope"], ["'nope'", "quantize"]),
])
def test_argument_errors_are_one_line(args, want):
    rc, so, se = run_cli(*args)
    assert rc == 2 and so == ""
    lines = se.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onebit: error: "), se
    assert all(w in lines[0] for w in want), se


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_one_line(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onebit: error: "), err
    assert "--no-such-flag" in err[0] or "required" in err[0], err
