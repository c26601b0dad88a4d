"""Streaming quantization (one tensor at a time) equals the in-memory path, sharding kept."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config

import onebit
from onebit.errors import OneBitError
from onebit.pipelines import streaming
from onebit.formats.checkpoint import INDEX_NAME, weight_files
from onebit.formats.sharded import SafetensorsReader, SafetensorsWriter
from onebit.pipelines.streaming import should_stream, stream_quantize
from onebit.models import load_model


def _tensors(d):
    out = {}
    for f in weight_files(d):
        out.update(load_file(f))
    return out


def _qc(d):
    return json.loads((d / "config.json").read_text())["quantization_config"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, fp_260k, stories260k):
    """stories260K saved in 6 shards, tokenizer beside it."""
    d = tmp_path_factory.mktemp("st") / "sharded"
    fp_260k.save_pretrained(d, max_shard_size="200KB")
    for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
        if os.path.exists(os.path.join(stories260k, f)):
            shutil.copyfile(os.path.join(stories260k, f), d / f)
    return d


@pytest.fixture(scope="module")
def streamed(sharded, tmp_path_factory):
    out = tmp_path_factory.mktemp("st") / "out"
    ledger = stream_quantize(sharded, out, onebit.OneBitConfig(), progress=False)
    return out, ledger


@pytest.fixture(scope="module")
def in_memory(sharded, tmp_path_factory):
    q = onebit.quantize(load_model(str(sharded)), onebit.OneBitConfig(), progress=False)
    out = tmp_path_factory.mktemp("st") / "mem"
    onebit.save(q, out)
    return q, out


def test_streamed_equals_in_memory(streamed, in_memory):
    out, ledger = streamed
    _, mem = in_memory
    a, b = _tensors(out), _tensors(mem)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert _qc(out) == _qc(mem)
    assert ledger.total_bits == onebit.checkpoint_ledger(mem).total_bits


def test_streamed_sharded_like_input(streamed, sharded):
    out, _ = streamed
    in_shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(in_shards) == 6
    assert sorted(p.name for p in out.glob("*.safetensors")) == in_shards
    index = json.loads((out / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(_tensors(out))
    assert index["metadata"]["total_size"] == onebit.checkpoint_ledger(out).total_bits // 8
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert not list(out.glob("*.data"))


def test_streamed_loads_same_logits(streamed, in_memory):
    out, _ = streamed
    q, _ = in_memory
    x = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        ref = q(x).logits
        assert torch.equal(ref, AutoModelForCausalLM.from_pretrained(out)(x).logits)
        assert torch.equal(ref, onebit.load(out)(x).logits)


def test_gpt2_conv1d_single_file_and_dtype(tmp_path):
    """Conv1D (transposed, with bias), tied embeddings, one unsharded file, --dtype cast."""
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4,
                                                    n_positions=32, bos_token_id=1, eos_token_id=2))
    m.save_pretrained(tmp_path / "src")
    stream_quantize(tmp_path / "src", tmp_path / "s", onebit.OneBitConfig(), dtype=torch.float16,
                    progress=False)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.safetensors")) == ["model.safetensors"]
    q = onebit.quantize(load_model(str(tmp_path / "src"), dtype=torch.float16), onebit.OneBitConfig(),
                        progress=False)
    onebit.save(q, tmp_path / "m")
    a, b = _tensors(tmp_path / "s"), _tensors(tmp_path / "m")
    assert set(a) == set(b) and "transformer.h.0.attn.c_attn.weight_packed" in a
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert a["transformer.wte.weight"].dtype == torch.float16


def test_writer_reader_round_trip(tmp_path):
    ts = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.tensor([True, False, True]),
          "c": torch.zeros(0, 4), "d": torch.tensor(7, dtype=torch.int64),
          "e": torch.randint(0, 255, (9,), dtype=torch.uint8), "f": torch.randn(2, 3, 4).half()}
    w = SafetensorsWriter(tmp_path / "x.safetensors", {"format": "pt"})
    for k, t in ts.items():
        w.add(k, t)
    w.close()
    back = load_file(tmp_path / "x.safetensors")  # the reference reader accepts it
    assert set(back) == set(ts) and all(torch.equal(back[k], ts[k]) for k in ts)
    r = SafetensorsReader(tmp_path / "x.safetensors")
    assert all(torch.equal(r.read(k), ts[k]) for k in ts)
    r.close()
    with pytest.raises(ValueError, match="twice"):
        w2 = SafetensorsWriter(tmp_path / "y.safetensors")
        w2.add("a", ts["a"])
        w2.add("a", ts["a"])


def test_should_stream(sharded, monkeypatch):
    cfg = onebit.OneBitConfig()
    assert should_stream(str(sharded), cfg, None) is False  # small: in memory
    assert should_stream(str(sharded), cfg, True) is True
    monkeypatch.setattr(streaming, "AUTO_STREAM_BYTES", 1000)
    assert should_stream(str(sharded), cfg, None) is True
    assert should_stream(str(sharded), cfg, False) is False
    assert should_stream("some-org/hub-model", cfg, None) is False
    from onebit.methods.onebit import OneBitHandler

    monkeypatch.setattr(OneBitHandler, "needs_calibration", True)
    assert should_stream(str(sharded), cfg, None) is False


def test_calibration_methods_refused(sharded, tmp_path, monkeypatch):
    from onebit.methods.onebit import OneBitHandler

    monkeypatch.setattr(OneBitHandler, "needs_calibration", True)
    with pytest.raises(OneBitError, match="calibration"):
        stream_quantize(sharded, tmp_path / "o", onebit.OneBitConfig(), progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_streaming(sharded, tmp_path, streamed):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "quantize", str(sharded),
                        str(tmp_path / "cli"), "--streaming"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(streaming)" in r.stdout and "bits/weight" in r.stdout
    a, b = _tensors(tmp_path / "cli"), _tensors(streamed[0])
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_every_method_without_calibration_streams_the_same(sharded, tmp_path):
    """Streaming is method-agnostic: the handler's packed module's state_dict is what is written."""
    from onebit.registry import get_handler_cls

    done = 0
    for method in onebit.available_methods():
        cfg = get_handler_cls(method).config_cls()
        if method == "onebit" or onebit.get_handler(cfg).needs_calibration:
            continue
        stream_quantize(sharded, tmp_path / f"s-{method}", cfg, progress=False)
        q = onebit.quantize(load_model(str(sharded)), cfg, progress=False)
        onebit.save(q, tmp_path / f"m-{method}")
        a, b = _tensors(tmp_path / f"s-{method}"), _tensors(tmp_path / f"m-{method}")
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), method
        done += 1
    assert done >= 1 or onebit.available_methods() == ["onebit"]
