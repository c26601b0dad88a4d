"""Every method: packed forward == fake-quant (train) forward, save -> load -> same logits,
honest ledger, bad settings refused."""
import copy

import pytest
import torch

import onebit
from onebit.errors import OneBitError
from onebit.methods.bitnet import BitNetConfig, OneBitW1A8Config, TernaryConfig
from onebit.methods.gptq import GPTQConfig
from onebit.methods.rtn import RTNConfig
from onebit.registry import get_handler

CONFIGS = {
    "rtn-w4": RTNConfig(bits=4),
    "rtn-w3-g16-asym-mse": RTNConfig(bits=3, group_size=16, sym=False, clip="mse"),
    "rtn-w2-tensor": RTNConfig(bits=2, group_size=-1),
    "rtn-w8-g48-a8": RTNConfig(bits=8, group_size=48, act_bits=8),
    "gptq-w3-g32": GPTQConfig(bits=3, group_size=32, calib_samples=4, calib_seqlen=32),
    "bitnet": BitNetConfig(),
    "ternary": TernaryConfig(),
    "onebit-w1a8": OneBitW1A8Config(),
    "rtn-w4-static-pct": RTNConfig(bits=4, act_bits=8, act_mode="static", act_observer="percentile",
                                   calib_samples=4, calib_seqlen=32),
    "ternary-static-ema": TernaryConfig(act_mode="static", act_observer="ema", calib_samples=4,
                                        calib_seqlen=32),
}


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_packed_forward_equals_fake_quant_forward(key, fp_260k):
    handler = get_handler(CONFIGS[key])
    x = torch.randn(2, 7, 172)
    lin = fp_260k.model.layers[1].mlp.down_proj       # in_features 172: not a multiple of 8 or 16
    train = handler.train_module("down", lin)
    if getattr(train, "act_scale", None) is not None:
        train.act_scale.fill_(0.02)
    packed = train.to_packed()
    assert torch.allclose(packed(x), train(x), rtol=1e-4, atol=1e-5)
    # gradients flow to the latent weight through the STE
    train(x).sum().backward()
    assert train.weight.grad is not None and train.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_save_load_same_logits_and_ledger(key, fp_260k, tok_260k, tmp_path):
    cfg = copy.deepcopy(CONFIGS[key])
    model = copy.deepcopy(fp_260k)
    onebit.quantize(model, cfg, progress=False)
    ids = torch.randint(3, 512, (2, 24))
    with torch.no_grad():
        before = model(ids).logits
    led = onebit.save(model, tmp_path / "ckpt", tokenizer=tok_260k)
    loaded = onebit.load(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(ids).logits
    assert torch.equal(before, after)
    # ledger: every tensor of a quantized layer is counted under it, file size matches
    st = (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    from onebit.formats.checkpoint import read_safetensors_header

    n, _ = read_safetensors_header(tmp_path / "ckpt" / "model.safetensors")
    assert led.total_bits == (st - 8 - n) * 8
    per = led.per_module()
    name = "model.layers.0.self_attn.q_proj"
    assert name in per
    names = {e.name.rpartition(".")[2] for e in led.entries if e.module == name}
    assert "weight_packed" in names
    if getattr(cfg, "sym", True) is False:
        assert "zero" in names
    if getattr(cfg, "static_acts", False):
        assert "act_scale" in names
    bpw = led.bits_per_linear_weight
    if cfg.method in ("rtn", "gptq"):                # codes + fp16 scales (+ uint8 zeros) per group
        g = cfg.group_size if cfg.group_size > 0 else 10 ** 9
        overhead = max(-(-i // g) * (16 + (0 if cfg.sym else 8)) / i for i in (64, 172))
        assert cfg.bits < bpw <= cfg.bits + overhead + 0.1
    elif cfg.method == "bitnet":
        assert 1 < bpw < 1.1
    elif cfg.method == "ternary":
        assert 2 < bpw < 2.1


def test_ledger_counts_scales_and_zeros_exactly(fp_260k):
    model = copy.deepcopy(fp_260k)
    onebit.quantize(model, RTNConfig(bits=3, group_size=32, sym=False), progress=False)
    m = model.model.layers[0].mlp.down_proj          # [64, 172]: 6 groups per row, 3-bit codes
    sd = {k: v for k, v in model.state_dict().items() if k.startswith("model.layers.0.mlp.down_proj.")}
    bits = sum(v.numel() * v.element_size() * 8 for v in sd.values())
    assert bits == 64 * ((172 * 3 + 7) // 8) * 8 + 64 * 6 * 16 + 64 * 6 * 8
    assert m.weight_packed.shape == (64, 65) and m.scale.shape == (64, 6) and m.zero.shape == (64, 6)


def test_group_size_larger_than_layer_refused(fp_260k):
    model = copy.deepcopy(fp_260k)
    with pytest.raises(OneBitError, match="larger than layer"):
        onebit.quantize(model, RTNConfig(bits=4, group_size=4096), progress=False)


@pytest.mark.parametrize("cfg,match", [
    (RTNConfig(bits=1), "choose one of 2, 3, 4, 5, 6, 7, 8"),
    (RTNConfig(bits=9), "choose one of"),
    (GPTQConfig(bits=4, clip="bogus"), "minmax, mse"),
    (BitNetConfig(act_bits=16), "act-bits"),
    (TernaryConfig(act_mode="sometimes"), "dynamic, static"),
])
def test_bad_settings(cfg, match):
    with pytest.raises(OneBitError, match=match):
        cfg.validate()


def test_calibration_refuses_eval_file(fp_260k, tok_260k, data_dir):
    model = copy.deepcopy(fp_260k)
    cfg = GPTQConfig(bits=4, calib_file=str(data_dir / "wikitext2" / "wiki.test.raw"))
    with pytest.raises(OneBitError, match="evaluation file"):
        onebit.quantize(model, cfg, progress=False, tokenizer=tok_260k)


def test_calibration_from_training_file(fp_260k, tok_260k, tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("Once upon a time there was a little dog. It liked to run and play. " * 40)
    model = copy.deepcopy(fp_260k)
    cfg = GPTQConfig(bits=4, calib_file=str(f), calib_samples=4, calib_seqlen=32)
    onebit.quantize(model, cfg, progress=False, tokenizer=tok_260k)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantLinear"


def test_every_trainable_form_has_one_to_packed_signature(fp_260k):
    """``to_packed(scale_dtype=None)`` for every method with a trainable form: float32 scales give the
    trainable forward, None the method's own scale dtype (float16 for most: within its rounding)."""
    import inspect

    from onebit.registry import available_methods, get_handler_cls

    lin = fp_260k.model.layers[1].mlp.up_proj
    x = torch.randn(2, 5, lin.in_features)
    seen = 0
    for name in available_methods():
        cfg = get_handler_cls(name).config_cls()
        try:
            train = get_handler(cfg).train_module("model.layers.1.mlp.up_proj", lin)
        except (NotImplementedError, OneBitError):
            continue                                   # no trainable form (e.g. calibrated-only methods)
        params = list(inspect.signature(train.to_packed).parameters.values())
        assert [p.name for p in params] == ["scale_dtype"] and params[0].default is None, name
        if getattr(train, "act_scale", None) is not None:
            train.act_scale.fill_(0.02)
        with torch.no_grad():
            want = train(x)
            assert torch.allclose(train.to_packed()(x), want, rtol=1e-2, atol=1e-2), name  # fp16 scales
            if not getattr(train, "act_bits", 0):       # 8-bit activations: a rounding may flip
                assert torch.allclose(train.to_packed(torch.float32)(x), want, rtol=1e-3, atol=1e-4), name
        seen += 1
    assert seen >= 8
