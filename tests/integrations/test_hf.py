"""transformers integration: from_pretrained / save_pretrained of packed checkpoints."""
import copy
import json
import shutil
import struct

import pytest
import torch
from transformers import AutoModelForCausalLM

import onebit
from onebit.errors import CheckpointError, OneBitError
from onebit.integrations import hf
from onebit.nn.onebit_linear import OneBitLinear


@pytest.fixture(scope="module")
def packed(tmp_path_factory, fp_260k, tok_260k, stories260k):
    q = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)
    out = tmp_path_factory.mktemp("hf") / "packed"
    onebit.save(q, out, tokenizer=tok_260k, source=stories260k)
    return q, out


def _x():
    return torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))


def test_registered_on_import():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    assert "onebit" in AUTO_QUANTIZER_MAPPING and "onebit" in AUTO_QUANTIZATION_CONFIG_MAPPING
    hf.register()  # idempotent


def test_from_pretrained_same_logits(packed):
    q, out = packed
    m = AutoModelForCausalLM.from_pretrained(out)
    n_packed = sum(isinstance(mod, OneBitLinear) for mod in m.modules())
    assert n_packed == len(q.config.quantization_config["modules"]) == 35
    assert m.model.layers[0].mlp.down_proj.g.dtype == torch.float16
    assert isinstance(m.config.quantization_config, dict)
    with torch.no_grad():
        assert torch.equal(q(_x()).logits, m(_x()).logits)


def test_save_pretrained_round_trip(packed, tmp_path):
    q, out = packed
    m = AutoModelForCausalLM.from_pretrained(out)
    m.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    assert saved == json.loads((out / "config.json").read_text())["quantization_config"]
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    m3 = onebit.load(tmp_path / "again")  # onebit's own loader reads HF's output too
    with torch.no_grad():
        ref = q(_x()).logits
        assert torch.equal(ref, m2(_x()).logits) and torch.equal(ref, m3(_x()).logits)
    # a model quantized in memory saves with save_pretrained as well
    q.save_pretrained(tmp_path / "direct")
    with torch.no_grad():
        assert torch.equal(ref, AutoModelForCausalLM.from_pretrained(tmp_path / "direct")(_x()).logits)


def test_generate_after_from_pretrained(packed):
    _, out = packed
    m = AutoModelForCausalLM.from_pretrained(out)
    g = m.generate(_x()[:1, :5], max_new_tokens=6, do_sample=False)
    assert g.shape == (1, 11)


def _bad(packed, tmp_path, name):
    _, out = packed
    bad = tmp_path / name
    shutil.copytree(out, bad)
    return bad


def _edit_qc(bad, **kw):
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"].update(kw)
    (bad / "config.json").write_text(json.dumps(cfg))


def test_from_pretrained_truncated(packed, tmp_path):
    bad = _bad(packed, tmp_path, "t")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_from_pretrained_header_lies(packed, tmp_path):
    bad = _bad(packed, tmp_path, "l")
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    k = next(k for k in header if k.endswith(".g"))
    header[k]["shape"] = [header[k]["shape"][0] * 2]
    hb = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    with pytest.raises(CheckpointError, match=k.replace(".", r"\.")):
        AutoModelForCausalLM.from_pretrained(bad)


def test_from_pretrained_missing_packed_tensor(packed, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = _bad(packed, tmp_path, "m")
    sd = load_file(bad / "model.safetensors")
    sd.pop("model.layers.2.self_attn.o_proj.weight_packed")
    save_file(sd, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layers\.2\.self_attn\.o_proj\.weight_packed"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_from_pretrained_future_version(packed, tmp_path):
    bad = _bad(packed, tmp_path, "v")
    _edit_qc(bad, format_version=onebit.FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="newer"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_from_pretrained_unknown_method(packed, tmp_path):
    bad = _bad(packed, tmp_path, "u")
    _edit_qc(bad, method="nope")
    with pytest.raises(OneBitError, match="unknown method 'nope'"):
        AutoModelForCausalLM.from_pretrained(bad)


def test_wrapper_gives_one_line_errors(packed, tmp_path):
    bad = _bad(packed, tmp_path, "w")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot load") as e:
        hf.from_pretrained(bad)
    assert "\n" not in str(e.value)


def test_pickle_weights_refused(packed, tmp_path):
    """A checkpoint whose weights are a pickle (.bin) is refused before anything is unpickled."""
    bad = _bad(packed, tmp_path, "p")
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="safetensors"):
        onebit.load(bad)
    with pytest.raises((CheckpointError, OSError)):
        AutoModelForCausalLM.from_pretrained(bad, use_safetensors=True)


def test_unsupported_transformers_major_refused(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "6.0.0")
    with pytest.raises(OneBitError, match=r"transformers 5\.x, found 6\.0\.0"):
        hf.check_transformers_version()
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

    with pytest.raises(OneBitError, match="transformers 5"):
        AUTO_QUANTIZATION_CONFIG_MAPPING["onebit"](quant_method="onebit", format_version=1,
                                                   method="onebit", modules={"a": [1, 1]})
