"""The method flags generated from the config dataclasses (onebit.cli.method_flags)."""
import dataclasses
import subprocess
import sys

import pytest

from onebit.cli.main import build_parser, main
from onebit.cli.method_flags import build_config, method_specs
from onebit.registry import get_handler_cls


def test_the_parse_reads_every_registered_config_as_it_is():
    """What the source parse finds (no import) equals the real dataclasses: fields, order, defaults."""
    from onebit.registry import available_methods

    specs = {s.method: s for s in method_specs()}
    assert set(specs) == set(available_methods())
    for name, spec in specs.items():
        cls = get_handler_cls(name).config_cls
        real = dataclasses.fields(cls)
        assert list(spec.fields) == [f.name for f in real], name
        for f in real:
            if f.default is not dataclasses.MISSING:
                assert spec.fields[f.name].default == f.default, (name, f.name)
            if f.metadata.get("help"):  # a redeclaration without metadata keeps the base's help
                assert spec.fields[f.name].help == f.metadata["help"], (name, f.name)


def _quantize_args(*argv):
    return build_parser().parse_args(["quantize", "M", "O", *argv])


def test_every_field_is_a_flag():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command").choices["quantize"]
    for spec in method_specs():
        for f in spec.fields.values():
            if f.metadata.get("cli") is False or f.annotation.startswith("dict") or \
                    (f.annotation.startswith("list") and not f.help):  # outputs of quantization
                continue
            assert f"--{f.name.replace('_', '-')}" in sub._option_string_actions, (spec.method, f.name)


@pytest.mark.parametrize("argv,method,want", [
    (["--bits", "3", "--group-size", "32", "--asym"], "rtn", {"bits": 3, "group_size": 32, "sym": False}),
    (["--awq-grid", "5", "--awq-alpha", "0.3"], "awq", {"n_grid": 5, "alpha": 0.3}),
    (["--n-grid", "5", "--alpha", "0.3", "--no-fold"], "awq", {"n_grid": 5, "alpha": 0.3, "fold": False}),
    (["--int8-threshold", "inf"], "llm-int8", {"threshold": float("inf")}),
    (["--block-size", "32", "--no-double-quant"], "nf4", {"block_size": 32, "double_quant": False}),
    (["--init", "nmf", "--foldable", "--skip", "x", "--skip", "y"], "onebit",
     {"init": "nmf", "foldable": True, "skip": ["x", "y"]}),
    ([], "bitnet", {"act_bits": 8}),    # a shared flag left out: the method's own default
    ([], "rtn", {"act_bits": 0, "bits": 4}),
])
def test_flags_build_the_method_config(argv, method, want):
    cfg = build_config(_quantize_args("--method", method, *argv))
    assert cfg.method == method
    assert {k: getattr(cfg, k) for k in want} == want


def test_a_flag_the_method_lacks_is_an_error(stories260k, tmp_path, capsys):
    assert main(["quantize", stories260k, str(tmp_path / "q"), "--method", "rtn", "--damp", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--damp is not a setting of method 'rtn'" in err[0] and "gptq" in err[0]
    assert not (tmp_path / "q").exists()


def test_distill_keeps_its_own_alpha_and_clip():
    """distill's --alpha (hidden-state loss weight) and --clip (gradient norm) win their spellings;
    the methods' fields of those names take their other spellings."""
    args = build_parser().parse_args(["distill", "T", "O", "--method", "awq", "--alpha", "0.5", "--clip", "2",
                                      "--awq-alpha", "0.25", "--rtn-clip", "mse"])
    assert args.kd_alpha == 0.5 and args.grad_clip == 2.0
    cfg = build_config(args)
    assert cfg.alpha == 0.25 and cfg.clip == "mse"
    assert build_config(build_parser().parse_args(["distill", "T", "O", "--method", "awq"])).alpha is None


def test_help_names_the_methods_and_their_defaults():
    p = build_parser()
    sub = next(a for a in p._actions if a.dest == "command").choices["quantize"]
    assert "method settings:" in sub.format_help()
    h = sub._option_string_actions["--act-bits"].help  # 0 for rtn/gptq/awq, 8 for bitnet & co.
    assert h.startswith("[") and "rtn" in h and "bitnet" in h and ("8 for bitnet" in h or "0 for gptq" in h)


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout


def test_a_missing_local_path_fails_before_torch_is_imported():
    out = _fresh("import sys\nfrom onebit.cli.main import main\n"
                 "rc = main(['quantize', '/no/such/model', 'x'])\n"
                 "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    assert out.split() == ["2", "False", "False"]


def test_a_hub_id_is_not_taken_for_a_missing_path():
    from onebit.cli.common import check_paths_exist
    from onebit.errors import OneBitError

    check_paths_exist("HuggingFaceTB/SmolLM2-135M", "gpt2", None)  # hub ids: the loader decides
    for bad in ("/no/such", "./nope", "~/nope", "a/b/c"):
        with pytest.raises(OneBitError, match="does not exist"):
            check_paths_exist(bad)


OLD_QUANTIZE = ("--method --init --layernorm --no-layernorm --scale-dtype --foldable --bits --group-size --sym --no-sym "
                "--asym --clip --damp --block-size --act-order --no-act-order --static-groups --no-static-groups "
                "--awq-grid --awq-alpha --int8-threshold --act-bits --act-mode --act-observer --act-percentile "
                "--calib-samples --calib-seqlen --calib-seed --calib-file --embed-quant --embed-group --embed-head "
                "--no-embed-head --skip --dtype --streaming --no-streaming --overwrite").split()
OLD_DISTILL = ("--student --method --init --layernorm --no-layernorm --scale-dtype --foldable --group-size --skip "
               "--train-norms --samples --seqlen --alpha --clip --seed --steps --lr --blockwise-steps").split()


@pytest.mark.parametrize("command,flags", [("quantize", OLD_QUANTIZE), ("distill", OLD_DISTILL)])
def test_every_flag_of_before_still_parses(command, flags):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    assert [f for f in flags if f not in sub._option_string_actions] == []


def test_torch_free_mirrors_equal_their_sources():
    """Constants repeated so that the parser and the configs stay torch-free."""
    from onebit import config, models
    from onebit.cli import common
    from onebit.methods import quant, svid

    assert config.INIT_METHODS == svid.INIT_METHODS and config.RTN_BITS == quant.RTN_BITS
    assert common._HUB_ID.pattern == models._HUB_ID.pattern
