"""LLM.int8(): an infinite threshold is plain W8A8, fp16 outlier features lower the error on
inputs with outliers, save -> load -> same logits, ledger counts the fp16 columns, bad settings."""
import copy
import math

import pytest
import torch

import onebit
from onebit.errors import OneBitError
from onebit.methods.int8quant import int8_rows, int8_tokens, llm_int8_linear, outlier_columns
from onebit.methods.llm_int8 import LLMInt8Config
from onebit.nn.llm_int8_linear import LLMInt8Linear
from onebit.registry import get_handler

CAL = dict(calib_samples=4, calib_seqlen=32)


def _calib():
    return torch.randint(3, 512, (4, 32), generator=torch.Generator().manual_seed(1))


def test_infinite_threshold_is_plain_int8(fp_260k):
    lin = fp_260k.model.layers[0].mlp.down_proj
    m = get_handler(LLMInt8Config(threshold=math.inf)).quantize_linear("down", lin)
    assert m.n_outliers == 0
    x = torch.randn(2, 5, lin.in_features)
    # independent W8A8 reference: per-row int8 weights, per-token int8 activations
    s = lin.weight.abs().amax(1) / 127
    w8 = (torch.round(lin.weight / s.half().float()[:, None]).clamp(-127, 127) * s.half().float()[:, None])
    sx = x.abs().amax(-1, keepdim=True) / 127
    x8 = torch.round(x / sx).clamp(-127, 127) * sx
    assert torch.allclose(m(x), x8 @ w8.T, atol=1e-5)
    model = onebit.quantize(copy.deepcopy(fp_260k), LLMInt8Config(threshold=math.inf, **CAL),
                            progress=False, calib_ids=_calib())
    assert all(isinstance(mod, LLMInt8Linear) and mod.n_outliers == 0 for mod in model.modules()
               if isinstance(mod, LLMInt8Linear))


def test_outlier_features_in_fp16_lower_the_error():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(200, 64, generator=g)
    x[:, [3, 40]] *= 60                                      # two outlier features
    idx = outlier_columns(x.abs().amax(0), 6.0)
    assert idx.tolist() == [3, 40]
    ref = lin(x)
    e_mixed = (LLMInt8Linear.from_linear(lin, idx)(x) - ref).pow(2).mean()
    e_plain = (LLMInt8Linear.from_linear(lin, idx[:0])(x) - ref).pow(2).mean()
    assert e_mixed < 0.5 * e_plain, (float(e_mixed), float(e_plain))
    # the decomposition's outlier part is exact fp16 arithmetic
    q, s = int8_rows(lin.weight[:, [i for i in range(64) if i not in (3, 40)]])
    y = llm_int8_linear(x, q, s, idx, lin.weight[:, idx].half())
    assert torch.allclose(y, LLMInt8Linear.from_linear(lin, idx)(x), atol=1e-6)
    assert torch.equal(int8_tokens(torch.zeros(2, 4)), torch.zeros(2, 4))


def test_save_load_same_logits_and_ledger(fp_260k, tok_260k, tmp_path):
    cfg = LLMInt8Config(threshold=2.0, **CAL)                # low enough for stories260K to have outliers
    model = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, calib_ids=_calib())
    assert cfg.outliers, "expected some outlier features at threshold 2"
    ids = torch.randint(3, 512, (2, 24))
    with torch.no_grad():
        before = model(ids).logits
    led = onebit.save(model, tmp_path / "ckpt", tokenizer=tok_260k)
    loaded = onebit.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, before)
    for name, k in cfg.outliers.items():
        out_f, in_f = led.modules[name]
        bits = led.per_module()[name][0]
        assert bits == 8 * out_f * (in_f - k) + 16 * out_f + 32 * k + 16 * out_f * k


@pytest.mark.parametrize("kw,msg", [({"threshold": 0}, "--int8-threshold"),
                                    ({"threshold": float("nan")}, "--int8-threshold"),
                                    ({"calib_samples": 0}, "--calib-samples")])
def test_bad_settings(kw, msg):
    with pytest.raises(OneBitError, match=msg) as e:
        LLMInt8Config(**kw).validate()
    assert "\n" not in str(e.value)


def test_one_layer_without_calibration_is_refused(fp_260k):
    with pytest.raises(OneBitError, match="calibration"):
        get_handler(LLMInt8Config()).quantize_linear("x", fp_260k.model.layers[0].mlp.up_proj)
