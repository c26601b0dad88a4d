"""Streaming block-wise reconstruction on stories260K: equals the in-memory mode, holds one block at a
time, resumes from the same state files, finds the teacher-data cache without loading the model."""
import copy
import json

import pytest
import torch

import onebit
from onebit.distill import streaming
from onebit.distill.blockwise import BlockConfig, reconstruct
from onebit.distill.data import model_fingerprint, teacher_data
from onebit.distill.streaming import materialised_blocks, stream_reconstruct, streamed_fingerprint
from onebit.errors import OneBitError
from onebit.formats.checkpoint import save_checkpoint
from onebit.formats.sharded import SafetensorsReader
from onebit.methods.onebit import OneBitConfig


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, fp_260k, tok_260k):
    src = tmp_path_factory.mktemp("sbw") / "src"
    fp_260k.save_pretrained(src, max_shard_size="300KB")
    tok_260k.save_pretrained(src)
    return src


@pytest.fixture(scope="module")
def data(fp_260k, tmp_path_factory):
    return teacher_data(fp_260k, 8, 32, seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def _cfg(**kw):
    return BlockConfig(**{**dict(steps=3, batch_size=4, lr=2e-3, warmup=1, eval_samples=4), **kw})


def _in_memory(fp_260k, data, out, config, cfg, **kw):
    model = copy.deepcopy(fp_260k)
    _, hist = reconstruct(model, config, data, cfg, progress=False, **kw)
    save_checkpoint(model, out)
    return onebit.load(out), hist


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert sb[k].dtype == v.dtype, k
        assert torch.allclose(sb[k].float(), v.float(), rtol=1e-4, atol=1e-5), k
    x = torch.randint(0, 512, (2, 24))
    assert torch.allclose(a(x).logits, b(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", [OneBitConfig(), OneBitConfig(foldable=True)], ids=["free", "foldable"])
def test_streamed_equals_in_memory(sharded, fp_260k, data, tmp_path, config):
    mem, mem_hist = _in_memory(fp_260k, data, tmp_path / "m", config, _cfg())
    led, hist = stream_reconstruct(sharded, tmp_path / "s", config, data, _cfg(), progress=False)
    assert (tmp_path / "s" / "model.safetensors.index.json").is_file()  # sharded like the input
    assert len(list((tmp_path / "s").glob("model-*.safetensors"))) > 1
    _assert_same(mem, onebit.load(tmp_path / "s"))
    assert [h["block"] for h in hist] == list(range(5))
    for h, m in zip(hist, mem_hist):
        assert h["err_final"] == pytest.approx(m["err_final"], rel=1e-3, abs=1e-6)
        assert h["err_final"] < h["err_init"]
    assert led.summary()["quantized_modules"] == 35


def test_one_block_materialised_at_a_time(sharded, data, tmp_path, monkeypatch):
    """The memory bound: whenever a tensor is read and while a block trains, at most one decoder block
    holds real (non-meta) parameters, and that block's are all real; at the end none is."""
    built = {}
    real_empty = streaming.empty_model

    def capture(*a, **kw):
        built["model"] = m = real_empty(*a, **kw)
        return m

    monkeypatch.setattr(streaming, "empty_model", capture)
    real_read = SafetensorsReader.read
    seen_reads = []

    def read(self, name):
        if "model" in built:
            live = materialised_blocks(built["model"].model.layers)
            assert len(live) <= 1, (name, live)
            seen_reads.append(live)
        return real_read(self, name)

    monkeypatch.setattr(SafetensorsReader, "read", read)
    trained = []

    def check(i, model):
        blocks = model.model.layers
        assert materialised_blocks(blocks) == [i]
        assert all(p.device.type != "meta" for p in blocks[i].parameters())
        trained.append(i)

    stream_reconstruct(sharded, tmp_path / "s", OneBitConfig(), data, _cfg(steps=2), progress=False,
                       on_block=check)
    assert trained == list(range(5))
    assert [1] in seen_reads and [4] in seen_reads  # a block's tensors are read while the one before is freed
    assert materialised_blocks(built["model"].model.layers) == []


def test_resume_from_an_in_memory_state(sharded, fp_260k, data, tmp_path):
    """Killed after 2 blocks in memory; the streaming mode resumes from the same state files and the
    result equals an uninterrupted in-memory run.  A kill leaves no output directory."""
    full, _ = _in_memory(fp_260k, data, tmp_path / "m", OneBitConfig(), _cfg())

    class Killed(Exception):
        pass

    def kill(i, m):
        if i == 2:
            raise Killed

    with pytest.raises(Killed):
        reconstruct(copy.deepcopy(fp_260k), OneBitConfig(), data, _cfg(), tmp_path / "st", progress=False,
                    on_block=kill)
    with pytest.raises(Killed):  # streaming, killed too: nothing written to OUT, the state kept
        stream_reconstruct(sharded, tmp_path / "s", OneBitConfig(), data, _cfg(), tmp_path / "st",
                           progress=False, on_block=kill, resume=True)
    assert not (tmp_path / "s").exists()
    assert json.loads((tmp_path / "st" / "blocks.json").read_text())["done"] == 2
    _, hist = stream_reconstruct(sharded, tmp_path / "s", OneBitConfig(), data, _cfg(), tmp_path / "st",
                                 progress=False, resume=True)
    assert [h["block"] for h in hist] == list(range(5))
    _assert_same(full, onebit.load(tmp_path / "s"))


def test_fingerprint_streamed_equals_loaded(stories260k, fp_260k):
    from onebit.models import load_model

    assert streamed_fingerprint(stories260k) == model_fingerprint(fp_260k)
    assert streamed_fingerprint(stories260k, torch.float32) == \
        model_fingerprint(load_model(stories260k, dtype=torch.float32))
    assert streamed_fingerprint(stories260k, torch.bfloat16) != streamed_fingerprint(stories260k)


def test_refuses_what_it_cannot_stream(tmp_path, data, fp_260k):
    with pytest.raises(OneBitError, match="local safetensors"):
        stream_reconstruct(tmp_path, tmp_path / "o", OneBitConfig(), data, _cfg(), progress=False)
    assert streaming.should_stream(str(tmp_path), None, None) is False
    assert streaming.should_stream(str(tmp_path), True, None) is True


def test_auto_streaming_when_the_teacher_does_not_fit(stories260k, monkeypatch):
    size = streaming.checkpoint_bytes(stories260k, torch.float32)  # counted from the headers
    n = sum(p.numel() for p in streaming.empty_model(stories260k).state_dict().values())
    assert size >= 4 * (n - 512 * 64)  # every tensor, the tied head stored once (stories260K: 512 x 64)
    assert streaming.checkpoint_bytes(stories260k, torch.float16) * 2 == size
    monkeypatch.setattr(streaming, "available_memory", lambda: size + 1)
    assert not streaming.should_stream(stories260k, None, torch.float32, copies=1)
    assert streaming.should_stream(stories260k, None, torch.float32, copies=2)  # teacher + student copy
    assert not streaming.should_stream(stories260k, False, torch.float32, copies=2)
    monkeypatch.setattr(streaming, "available_memory", lambda: None)  # unknown: in memory, as before
    assert not streaming.should_stream(stories260k, None, torch.float32, copies=2)
