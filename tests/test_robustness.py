"""Bad input, each case a test: one-line error naming the file/tensor, exit 2, no traceback,
no half-written output.  (Truncated/future-version packed checkpoints for load/info/eval/
generate are in tests/formats/test_checkpoint.py and tests/cli/test_cli.py.)"""
import copy
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import onebit
from onebit.cli.main import main
from onebit.errors import OneBitError
from onebit.formats import sharded
from onebit.pipelines import streaming
from onebit.formats.packing import pack_signs, unpack_signs


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def assert_one_line_error(rc, se, *needles):
    assert rc == 2, se
    assert "Traceback" not in se, se
    errs = [ln for ln in se.strip().splitlines() if ln.startswith("onebit: error:")]
    assert len(errs) == 1, se
    for n in needles:
        assert n in errs[0], (n, se)


@pytest.fixture(scope="module")
def src(tmp_path_factory, fp_260k, stories260k):
    """stories260K as a 3-shard safetensors model directory with its tokenizer."""
    d = tmp_path_factory.mktemp("rob") / "src"
    fp_260k.save_pretrained(d, max_shard_size="400KB")
    for f in os.listdir(stories260k):
        if f.startswith(("tokenizer", "special_tokens")):
            shutil.copyfile(os.path.join(stories260k, f), d / f)
    return d


@pytest.fixture(scope="module")
def packed(tmp_path_factory, fp_260k, tok_260k, stories260k):
    q = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)
    out = tmp_path_factory.mktemp("rob") / "packed"
    onebit.save(q, out, tokenizer=tok_260k, source=stories260k)
    return out


def _copy(d, tmp_path, name="bad"):
    return shutil.copytree(d, tmp_path / name)


def _shard_with(d, tensor):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    return d / index["weight_map"][tensor]


def _nothing_left(tmp_path, out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


# ------------------------------------------------------------------ corrupt / lying inputs
def test_truncated_input_shard(src, tmp_path):
    bad = _copy(src, tmp_path)
    f = _shard_with(bad, "model.layers.3.mlp.up_proj.weight")
    f.write_bytes(f.read_bytes()[:-10])
    for extra in ([], ["--streaming"]):
        rc, so, se = run_cli("quantize", bad, tmp_path / "out", *extra)
        assert_one_line_error(rc, se, f.name)
        _nothing_left(tmp_path, tmp_path / "out")


def test_corrupted_header_streaming(src, tmp_path):
    bad = _copy(src, tmp_path)
    f = _shard_with(bad, "model.layers.0.mlp.up_proj.weight")
    raw = bytearray(f.read_bytes())
    raw[8:24] = b"\xff\xfe{{{{garbage!!"
    f.write_bytes(bytes(raw))
    rc, so, se = run_cli("quantize", bad, tmp_path / "out", "--streaming")
    assert_one_line_error(rc, se, f.name, "corrupt")
    _nothing_left(tmp_path, tmp_path / "out")


def test_header_lies_about_shape_streaming(src, tmp_path):
    bad = _copy(src, tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    f = _shard_with(bad, name)
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header[name]["shape"] = [header[name]["shape"][1], header[name]["shape"][0] + 1]
    hb = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    with pytest.raises(OneBitError, match=name.replace(".", r"\.")):
        streaming.stream_quantize(bad, tmp_path / "out", onebit.OneBitConfig(), progress=False)
    _nothing_left(tmp_path, tmp_path / "out")


def test_consistent_header_wrong_shape_for_model(src, tmp_path):
    """A header that is self-consistent but gives a linear the wrong shape for the config."""
    bad = _copy(src, tmp_path)
    name = "model.layers.2.mlp.down_proj.weight"
    f = _shard_with(bad, name)
    sd = load_file(f)
    sd[name] = sd[name][:, :-8].contiguous()
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(OneBitError, match=name.replace(".", r"\.")):
        streaming.stream_quantize(bad, tmp_path / "out", onebit.OneBitConfig(), progress=False)
    _nothing_left(tmp_path, tmp_path / "out")


def test_pickle_only_checkpoint_refused(src, tmp_path):
    bad = tmp_path / "binonly"
    bad.mkdir()
    shutil.copyfile(src / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04K.")
    with pytest.raises(OneBitError, match="safetensors only"):
        streaming.stream_quantize(bad, tmp_path / "out", onebit.OneBitConfig(), progress=False)


def test_other_method_checkpoint_info(packed, tmp_path):
    bad = _copy(packed, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (bad / "config.json").write_text(json.dumps(cfg))
    rc, so, se = run_cli("info", bad)
    assert_one_line_error(rc, se, "'awq'", str(bad))


def test_missing_quantization_config_load(src):
    with pytest.raises(OneBitError, match="no quantization_config"):
        onebit.load(src)


# ------------------------------------------------------------------ weights
def test_nan_and_inf_refused_naming_tensor(src, tmp_path):
    bad = _copy(src, tmp_path)
    name = "model.layers.4.self_attn.v_proj.weight"
    f = _shard_with(bad, name)
    sd = load_file(f)
    sd[name][3, 5] = float("inf")
    save_file(sd, f, metadata={"format": "pt"})
    rc, so, se = run_cli("quantize", bad, tmp_path / "out", "--streaming")
    assert_one_line_error(rc, se, name, "NaN or Inf", f.name)
    _nothing_left(tmp_path, tmp_path / "out")
    rc, so, se = run_cli("quantize", bad, tmp_path / "out")  # in memory: names the layer
    assert_one_line_error(rc, se, "model.layers.4.self_attn.v_proj", "NaN or Inf")
    _nothing_left(tmp_path, tmp_path / "out")


def test_all_zero_rows_pack_as_plus_one():
    """sign(0) = +1 by the packing convention: an all-zero row packs to all-ones bits; SVID gives
    that row h = 0, so its output is exactly 0 (plus bias) while the other rows are unaffected."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(20, 6)
    with torch.no_grad():
        lin.weight[2] = 0.0
    assert torch.equal(pack_signs(lin.weight)[2], torch.tensor([0xFF, 0xFF, 0x0F], dtype=torch.uint8))
    handler = onebit.get_handler(onebit.OneBitConfig())
    q = handler.quantize_linear("zero_row", lin)
    assert torch.equal(unpack_signs(q.weight_packed, 20)[2], torch.ones(20))
    assert q.h[2] == 0 and torch.isfinite(q.h).all() and torch.isfinite(q.g).all()
    x = torch.randn(4, 20)
    with torch.no_grad():
        y = q(x)
    assert torch.equal(y[:, 2], lin.bias[2].expand(4))
    assert (y[:, [0, 1, 3, 4, 5]] - lin.bias[[0, 1, 3, 4, 5]]).abs().min() > 0
    with torch.no_grad():  # an all-zero matrix: every output is the bias, nothing is NaN
        lin.weight.zero_()
    y = handler.quantize_linear("zero", lin)(x)
    assert torch.equal(y, lin.bias.expand(4, 6))


# ------------------------------------------------------------------ models
def test_unknown_architecture(src, tmp_path):
    bad = _copy(src, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "martian-lm"
    (bad / "config.json").write_text(json.dumps(cfg))
    for extra in ([], ["--streaming"]):
        rc, so, se = run_cli("quantize", bad, tmp_path / "out", *extra)
        assert_one_line_error(rc, se, "martian-lm")
        _nothing_left(tmp_path, tmp_path / "out")


def test_no_linear_layers_left(src, tmp_path):
    rc, so, se = run_cli("quantize", src, tmp_path / "out", "--skip", "*", "--streaming")
    assert_one_line_error(rc, se, "no linear layers")
    _nothing_left(tmp_path, tmp_path / "out")


# ------------------------------------------------------------------ interrupted writes
@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_streaming_write_leaves_nothing(src, tmp_path, monkeypatch, exc):
    calls = {"n": 0}
    orig = sharded.SafetensorsWriter.add

    def add(self, name, t):
        calls["n"] += 1
        if calls["n"] == 20:  # midway, after a shard was finished
            raise exc
        return orig(self, name, t)

    monkeypatch.setattr(sharded.SafetensorsWriter, "add", add)
    with pytest.raises(type(exc)):
        streaming.stream_quantize(src, tmp_path / "out", onebit.OneBitConfig(), progress=False)
    _nothing_left(tmp_path, tmp_path / "out")


def test_out_of_space_cli_one_line(src, tmp_path, monkeypatch, capsys):
    def full(self, name, t):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sharded.SafetensorsWriter, "add", full)
    rc = main(["quantize", str(src), str(tmp_path / "out"), "--streaming", "-q"])
    assert_one_line_error(rc, capsys.readouterr().err, "No space left on device")
    _nothing_left(tmp_path, tmp_path / "out")


def test_overwrite_failure_keeps_old_output(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    streaming.stream_quantize(src, out, onebit.OneBitConfig(), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(sharded.SafetensorsWriter, "close",
                        lambda self: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        streaming.stream_quantize(src, out, onebit.OneBitConfig(), overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------ tokenizer, prompt
def test_missing_tokenizer(packed, src, tmp_path):
    bad = _copy(packed, tmp_path)
    for p in bad.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens")):
            p.unlink()
    rc, so, se = run_cli("generate", bad, "--max-new-tokens", "2")
    assert_one_line_error(rc, se, "tokenizer", str(bad))
    # quantizing a model without a tokenizer works (warning); the output has none
    nt = _copy(src, tmp_path, "notok")
    for p in nt.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens")):
            p.unlink()
    rc, so, se = run_cli("quantize", nt, tmp_path / "q")
    assert rc == 0 and "no tokenizer" in se, se


def test_prompt_longer_than_context(packed):
    rc, so, se = run_cli("generate", packed, "--prompt", "Once upon a time there was a dog. " * 200)
    assert_one_line_error(rc, se, "prompt is", "context is 512")


# ------------------------------------------------------------------ no code from the checkpoint
def test_checkpoint_code_never_executed(packed, tmp_path):
    """config.json pointing at Python in the checkpoint (auto_map) is not imported."""
    bad = _copy(packed, tmp_path)
    marker = tmp_path / "PWNED"
    (bad / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                 "from transformers import LlamaConfig, LlamaForCausalLM\n"
                                 "class EvilConfig(LlamaConfig): pass\n"
                                 "class Evil(LlamaForCausalLM): pass\n")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"}
    (bad / "config.json").write_text(json.dumps(cfg))
    try:
        onebit.load(bad)
    except OneBitError:
        pass
    rc, so, se = run_cli("generate", bad, "--max-new-tokens", "2")
    assert "Traceback" not in se and rc in (0, 2), se
    assert not marker.exists()
