"""NF4 with double quantization: the published level table, codes round-trip through packing,
lower error than int4 RTN on normal weights, ledger bits = the stored tensors, save -> load."""
import copy

import pytest
import torch

import onebit
from onebit.errors import OneBitError
from onebit.methods.nf4 import NF4Config
from onebit.methods.nf4quant import (double_dequantize, double_quantize, nf4_bits, nf4_codes,
                                     nf4_dequantize, nf4_fake_quantize, nf4_levels, nf4_quantize)
from onebit.methods.quant import fake_quantize
from onebit.nn.nf4_linear import NF4Linear

#: QLoRA appendix E / bitsandbytes' NF4 table (functional.py, get_4bit_type("nf4"))
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def test_level_table_matches_the_published_values():
    lv = nf4_levels()
    assert lv.shape == (16,)
    assert torch.allclose(lv, torch.tensor(PUBLISHED_NF4), atol=1e-6, rtol=0)
    assert lv[7] == 0 and lv[0] == -1 and lv[15] == 1


def test_codes_round_trip_through_the_packed_module():
    lin = torch.nn.Linear(100, 12, bias=True)       # 1200 values: blocks of 64 cross rows, last one short
    m = NF4Linear.from_linear(lin)
    t = nf4_quantize(lin.weight)
    assert torch.equal(m.codes().reshape(-1), t["codes"])
    # codes of the dequantized weight are the codes themselves (levels are fixed points)
    a = m.block_absmax()
    w_hat = m.dense_weight()
    assert torch.equal(nf4_codes(w_hat, a), t["codes"])
    assert torch.equal(nf4_dequantize(t["codes"], a, w_hat.shape), w_hat)
    x = torch.randn(3, 5, 100)
    assert torch.allclose(m(x), torch.nn.functional.linear(x, w_hat, lin.bias), atol=1e-6)


def test_double_quantized_absmax_error_is_within_half_a_step():
    a = torch.rand(1000) * 0.1
    q, s, off = double_quantize(a, 256)
    assert q.dtype == torch.int8 and s.shape == (4,) and off.shape == (1,)
    err = (double_dequantize(q, s, off, 256) - a).abs()
    assert (err <= s.repeat_interleave(256)[:1000] / 2 + 1e-7).all()


@pytest.mark.parametrize("dq", [True, False])
def test_lower_error_than_int4_rtn_on_normal_weights(dq):
    w = torch.randn(256, 512)
    e_nf4 = (nf4_fake_quantize(w, 64, dq) - w).pow(2).mean()
    e_int4 = (fake_quantize(w, 4, True, 64) - w).pow(2).mean()       # same block of 64, absmax scale
    assert e_nf4 < e_int4, (float(e_nf4), float(e_int4))


def test_value_exactly_representable_and_zero_block():
    w = torch.zeros(2, 64)
    w[1] = torch.tensor(PUBLISHED_NF4 * 4) * 0.5    # every level times the block absmax
    assert torch.allclose(nf4_fake_quantize(w, 64, False), w, atol=1e-6)
    assert torch.equal(nf4_fake_quantize(w, 64, False)[0], torch.zeros(64))


def test_ledger_bits_and_save_load(fp_260k, tok_260k, tmp_path):
    model = onebit.quantize(copy.deepcopy(fp_260k), NF4Config(), progress=False)
    ids = torch.randint(3, 512, (2, 24))
    with torch.no_grad():
        before = model(ids).logits
    led = onebit.save(model, tmp_path / "ckpt", tokenizer=tok_260k)
    loaded = onebit.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, before)
    for name, (out_f, in_f) in led.modules.items():
        bits = led.per_module()[name][0]
        pad = out_f * (in_f % 2) * 4                 # rows of an odd width pad half a byte
        assert bits == nf4_bits(out_f * in_f) + pad, name
    assert 4.127 <= led.bits_per_linear_weight < 4.2
    # the published 4.127 for a large layer
    assert nf4_bits(4096 * 4096) / 4096 ** 2 == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-5)
    assert nf4_bits(4096 * 4096, double_quant=False) / 4096 ** 2 == pytest.approx(4.5, abs=1e-5)


def test_nf4_is_better_than_rtn_w4_g64_on_the_model(fp_260k):
    from onebit.methods.rtn import RTNConfig

    ids = torch.randint(3, 512, (4, 32))
    nf4 = onebit.quantize(copy.deepcopy(fp_260k), NF4Config(), progress=False)
    rtn = onebit.quantize(copy.deepcopy(fp_260k), RTNConfig(bits=4, group_size=64), progress=False)
    with torch.no_grad():
        ref = fp_260k(ids).logits
        e = {k: (m(ids).logits - ref).pow(2).mean() for k, m in (("nf4", nf4), ("rtn", rtn))}
    assert e["nf4"] < e["rtn"], e


@pytest.mark.parametrize("kw,msg", [({"block_size": 0}, "--nf4-block-size"),
                                    ({"dq_block_size": -1}, "--nf4-dq-block-size")])
def test_bad_settings(kw, msg):
    with pytest.raises(OneBitError, match=msg) as e:
        NF4Config(**kw).validate()
    assert "\n" not in str(e.value)
