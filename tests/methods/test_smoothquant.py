"""SmoothQuant: the scale formula and its limits, no smoothing = plain W8A8 exactly, smoothing keeps
the float function, it shrinks activation outliers, save -> load -> same logits, ledger, bad settings
refused in one line, the compare spec."""
import copy

import pytest
import torch

import onebit
from onebit.errors import OneBitError
from onebit.methods.rtn import RTNConfig
from onebit.methods.smoothing import MIN_SCALE, smooth_scales, weight_absmax
from onebit.methods.smoothquant import SmoothQuantConfig, SmoothQuantHandler
from onebit.nn.quant_linear import QuantLinear
from onebit.nn.smoothquant_linear import SmoothQuantLinear

CAL = dict(calib_samples=4, calib_seqlen=32)


def _calib(n=4, seqlen=32):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 512, (n, seqlen), generator=g)


def test_scale_formula_and_its_two_ends():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, generator=g) * 20 + 0.1
    W = [torch.randn(48, 64, generator=g), torch.randn(16, 64, generator=g)]
    w = weight_absmax(W)
    assert torch.equal(w, torch.cat(W).abs().amax(0))
    s = smooth_scales(x, w, 0.5)
    assert torch.allclose(s, (x / w).sqrt(), rtol=1e-6)
    # α = 1: every smoothed activation channel's max is 1; α = 0: every weight column's max is 1
    assert torch.allclose(x / smooth_scales(x, w, 1.0), torch.ones(64), rtol=1e-6)
    assert torch.allclose(weight_absmax([Wi * smooth_scales(x, w, 0.0) for Wi in W]), torch.ones(64), rtol=1e-6)
    # α = 0.5 equalises the two maxima per channel
    assert torch.allclose(x / s, w * s, rtol=1e-5)
    # a dead channel gets a finite, positive scale
    x[3] = 0
    s = smooth_scales(x, w, 0.5)
    assert torch.isfinite(s).all() and s[3] >= MIN_SCALE


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_no_smoothing_is_plain_w8a8_exactly(fp_260k, mode):
    """s = 1: the same tensors as RTN W8A8 (per-row int8 weights, int8 activations), same logits."""
    calib = _calib()
    rtn = onebit.quantize(copy.deepcopy(fp_260k), RTNConfig(bits=8, act_bits=8, act_mode=mode, **CAL),
                          progress=False, calib_ids=calib)
    cfg = SmoothQuantConfig(smooth=False, act_mode=mode, **CAL)
    sq = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=calib)
    assert cfg.input_scaled == []
    a, r = sq.state_dict(), rtn.state_dict()
    assert a.keys() == r.keys()
    for k in a:
        assert torch.equal(a[k], r[k]), k
    ids = torch.randint(3, 512, (2, 20))
    with torch.no_grad():
        assert torch.equal(sq(ids).logits, rtn(ids).logits)


def test_smoothing_keeps_the_float_function_and_flattens_outlier_channels(fp_260k):
    """Without quantization (the scales applied to the float model) the logits do not change; the
    smoothed inputs' largest channel max over the median shrinks."""
    from onebit.methods.llm_int8 import input_absmax
    from onebit.surgery import find_linears

    model = copy.deepcopy(fp_260k)
    calib = _calib()
    lins = dict(find_linears(model, ["lm_head"]))
    before = input_absmax(model, lins, calib)
    ids = torch.randint(3, 512, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
    h = SmoothQuantHandler(SmoothQuantConfig(**CAL))
    explicit = h.smooth(model, lins, before)
    assert explicit and all(n.endswith("o_proj") for n in explicit)   # GQA: o_proj has no fold
    hooks = [lins[n].register_forward_pre_hook(lambda m, a, _s=s: (a[0] / _s,)) for n, s in explicit.items()]
    try:
        with torch.no_grad():
            assert torch.allclose(model(ids).logits, ref, rtol=1e-4, atol=1e-4)
        after = input_absmax(model, lins, calib)
    finally:
        for hk in hooks:
            hk.remove()
    ratio = lambda a: float(a.max() / a.median())  # noqa: E731
    q = "model.layers.0.self_attn.q_proj"
    assert ratio(after[q]) < ratio(before[q])


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_smoothquant_modules_and_closer_logits_than_float_activations_allow(fp_260k, mode):
    cfg = SmoothQuantConfig(act_mode=mode, **CAL)
    m = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=_calib())
    assert cfg.input_scaled and all(n.endswith("o_proj") for n in cfg.input_scaled)
    assert all(isinstance(m.get_submodule(n), SmoothQuantLinear) for n in cfg.input_scaled)
    q = m.get_submodule("model.layers.0.self_attn.q_proj")
    assert type(q) is QuantLinear and q.bits == 8 and q.act_bits == 8
    assert (q.act_scale is not None) == (mode == "static")
    ids = torch.randint(3, 512, (2, 20))
    with torch.no_grad():
        ref, out = fp_260k(ids).logits, m(ids).logits
    assert torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.2 * ref.abs().mean()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_save_load_same_logits_and_ledger(fp_260k, tok_260k, tmp_path, mode):
    cfg = SmoothQuantConfig(act_mode=mode, **CAL)
    model = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=_calib())
    ids = torch.randint(3, 512, (2, 24))
    with torch.no_grad():
        before = model(ids).logits
    led = onebit.save(model, tmp_path / "ckpt", tokenizer=tok_260k)
    loaded = onebit.load(tmp_path / "ckpt")
    assert loaded.config.quantization_config["method"] == "smoothquant"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, before)
    o, q = cfg.input_scaled[0], "model.layers.0.self_attn.q_proj"
    names = {e.name.rpartition(".")[2] for e in led.entries if e.module == o}
    assert names == {"weight_packed", "scale", "input_scale"} | ({"act_scale"} if mode == "static" else set())
    per = led.per_module()
    out_f, in_f = led.modules[q]
    extra = 32 if mode == "static" else 0
    assert per[q][0] == out_f * in_f * 8 + out_f * 16 + extra      # int8 codes + fp16 row scales
    out_o, in_o = led.modules[o]
    assert per[o][0] == out_o * in_o * 8 + out_o * 16 + in_o * 16 + extra


@pytest.mark.parametrize("kw,msg", [({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
                                    ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
                                    ({"act_bits": 0}, "act_bits must be 2..8"),
                                    ({"act_mode": "sometimes"}, "dynamic, static"),
                                    ({"bits": 9}, "--bits")])
def test_bad_settings_one_line(kw, msg):
    with pytest.raises(OneBitError, match=msg) as e:
        SmoothQuantConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_one_layer_at_a_time_is_refused(fp_260k):
    from onebit.registry import get_handler

    with pytest.raises(OneBitError, match="calibration"):
        get_handler(SmoothQuantConfig()).quantize_linear("x", fp_260k.model.layers[0].mlp.up_proj)


def test_compare_spec():
    from onebit.compare import parse_method_spec

    cfg = parse_method_spec("smoothquant-w8a8")
    assert isinstance(cfg, SmoothQuantConfig) and (cfg.bits, cfg.act_bits, cfg.act_mode) == (8, 8, "dynamic")
    cfg = parse_method_spec("smoothquant-w8a8-static")
    assert cfg.act_mode == "static"
    assert parse_method_spec("rtn-w8a8").act_bits == 8


def test_cli_flags_build_the_config():
    from onebit.cli.main import build_parser
    from onebit.cli.method_flags import build_config

    args = build_parser().parse_args(["quantize", "M", "O", "--method", "smoothquant", "--sq-alpha", "0.8",
                                      "--act-mode", "static", "--no-fold"])
    cfg = build_config(args)
    assert isinstance(cfg, SmoothQuantConfig)
    assert (cfg.alpha, cfg.act_mode, cfg.fold, cfg.smooth, cfg.bits, cfg.act_bits) == (0.8, "static", False, True, 8, 8)
    args = build_parser().parse_args(["quantize", "M", "O", "--method", "smoothquant", "--alpha", "2"])
    with pytest.raises(OneBitError, match=r"alpha must be in \[0, 1\]"):
        build_config(args)
