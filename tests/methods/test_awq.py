"""AWQ: unit scales = RTN exactly, the search never loses to RTN on its own objective, folding keeps
the float function, explicit input scales survive save -> load, bad settings refused."""
import copy

import pytest
import torch

import onebit
from onebit.errors import OneBitError
from onebit.methods.awq import (AWQConfig, awq_groups, awq_output_error, awq_scales, awq_search,
                                fold_inverse_scale)
from onebit.methods.quant import fake_quantize
from onebit.methods.rtn import RTNConfig
from onebit.nn.awq_linear import AWQLinear
from onebit.nn.quant_linear import QuantLinear

CAL = dict(calib_samples=4, calib_seqlen=32)


def _calib(n=4, seqlen=32):
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 512, (n, seqlen), generator=g)


def test_unit_scales_at_alpha_zero():
    x = torch.rand(64) * 10
    assert torch.equal(awq_scales(x, 0.0), torch.ones(64))
    s = awq_scales(x, 0.5)
    assert torch.allclose(s.max() * s.min(), torch.tensor(1.0), rtol=1e-5)   # normalised
    assert torch.equal(torch.argsort(s), torch.argsort(x))                      # monotone in mean|x|


@pytest.mark.parametrize("bits,gs", [(4, 32), (3, 16)])
def test_awq_alpha0_equals_rtn_exactly(fp_260k, bits, gs):
    rtn = onebit.quantize(copy.deepcopy(fp_260k), RTNConfig(bits=bits, group_size=gs), progress=False)
    cfg = AWQConfig(bits=bits, group_size=gs, alpha=0.0, **CAL)
    awq = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=_calib())
    assert cfg.input_scaled == []
    a, r = awq.state_dict(), rtn.state_dict()
    assert a.keys() == r.keys()
    for k in a:
        assert torch.equal(a[k], r[k]), k
    ids = torch.randint(3, 512, (2, 20))
    with torch.no_grad():
        assert torch.equal(awq(ids).logits, rtn(ids).logits)


def test_search_never_worse_than_rtn_and_helps_with_outlier_channels():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 64, generator=g)
    X = torch.randn(2000, 64, generator=g)
    X[:, :4] *= 30                                     # a few salient input channels
    H = X.T @ X / X.shape[0]
    q = lambda w: fake_quantize(w, 3, True, 32)        # noqa: E731
    s, a, errs = awq_search([W], H, X.abs().mean(0), q, n_grid=20)
    assert errs[0.0] == pytest.approx(awq_output_error([W], torch.ones(64), H, q))
    assert min(errs.values()) == errs[a] <= errs[0.0]
    assert a > 0 and errs[a] < 0.9 * errs[0.0]
    # the objective is the mean squared output error on those inputs
    direct = ((X @ (q(W * s) / s - W).T) ** 2).sum(1).mean()
    assert awq_output_error([W], s, H, q) == pytest.approx(float(direct), rel=1e-3)


def _mha_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # non-trivial norms, so a wrong fold shows
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("which", ["gqa", "mha"])
def test_folding_random_scales_keeps_the_float_function(fp_260k, which):
    model = copy.deepcopy(fp_260k) if which == "gqa" else _mha_model()
    ids = torch.randint(3, 512, (2, 16))
    with torch.no_grad():
        ref = model(ids).logits
        folded = 0
        for bi, block in enumerate(model.model.layers):
            bp = f"model.layers.{bi}."
            lins = {f"{bp}{n}": m for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
            for g in awq_groups(block, bp, lins):
                if g.prev is None:
                    continue
                s = torch.rand(lins[g.names[0]].in_features) * 3 + 0.2
                for n in g.names:
                    lins[n].weight.mul_(s)
                fold_inverse_scale(g.prev, g.prev_kind, s)
                folded += len(g.names)
        out = model(ids).logits
    per_block = 7 if which == "mha" else 6           # o_proj folds into v_proj only without GQA
    assert folded == per_block * len(model.model.layers)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_gqa_o_proj_keeps_an_explicit_scale_and_mha_folds_it(fp_260k):
    cfg = AWQConfig(bits=3, group_size=32, **CAL)
    m = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=_calib())
    assert cfg.input_scaled and all(n.endswith("o_proj") for n in cfg.input_scaled)
    assert all(isinstance(m.get_submodule(n), AWQLinear) for n in cfg.input_scaled)
    assert isinstance(m.get_submodule("model.layers.0.self_attn.q_proj"), QuantLinear)
    cfg2 = AWQConfig(bits=3, group_size=32, **CAL)
    onebit.quantize(_mha_model(), cfg2, progress=False, calib_ids=_calib())
    assert cfg2.input_scaled == []


def test_awq_beats_rtn_on_calibration_output_error(fp_260k):
    """AWQ's objective, on the model: the final logits' error is lower than RTN's."""
    calib = _calib(8, 64)
    rtn = onebit.quantize(copy.deepcopy(fp_260k), RTNConfig(bits=3, group_size=32), progress=False)
    awq = onebit.quantize(copy.deepcopy(fp_260k), AWQConfig(bits=3, group_size=32, **CAL),
                          progress=False, calib_ids=calib)
    with torch.no_grad():
        ref = fp_260k(calib).logits
        e_rtn = (rtn(calib).logits - ref).pow(2).mean()
        e_awq = (awq(calib).logits - ref).pow(2).mean()
    assert e_awq < e_rtn, (float(e_awq), float(e_rtn))


def test_save_load_same_logits_with_explicit_scales(fp_260k, tok_260k, tmp_path):
    cfg = AWQConfig(bits=4, group_size=32, **CAL)
    model = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=_calib())
    ids = torch.randint(3, 512, (2, 24))
    with torch.no_grad():
        before = model(ids).logits
    led = onebit.save(model, tmp_path / "ckpt", tokenizer=tok_260k)
    loaded = onebit.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, before)
    o = cfg.input_scaled[0]
    names = {e.name.rpartition(".")[2] for e in led.entries if e.module == o}
    assert names == {"weight_packed", "scale", "input_scale"}
    # the explicit scale costs 16 bits per input channel on top of RTN's bits
    out_f, in_f = led.modules[o]
    q = "model.layers.0.self_attn.q_proj"
    assert led.per_module()[o][0] - 16 * in_f == pytest.approx(
        led.per_module()[q][0] * out_f / led.modules[q][0])


@pytest.mark.parametrize("kw,msg", [({"n_grid": 0}, "--awq-grid"), ({"alpha": 1.5}, "--awq-alpha"),
                                    ({"bits": 9}, "--bits")])
def test_bad_settings(kw, msg):
    with pytest.raises(OneBitError, match=msg) as e:
        AWQConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_one_layer_at_a_time_is_refused(fp_260k):
    from onebit.registry import get_handler

    with pytest.raises(OneBitError, match="calibration"):
        get_handler(AWQConfig()).quantize_linear("x", fp_260k.model.layers[0].mlp.up_proj)
