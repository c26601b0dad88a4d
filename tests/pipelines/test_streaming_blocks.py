"""Streaming GPTQ (block by block) equals in-memory GPTQ with the same calibration windows."""
import copy
import subprocess
import sys

import pytest
import torch

import onebit
from onebit.calibration import file_samples
from onebit.errors import OneBitError
from onebit.pipelines.streaming_blocks import stream_quantize_blocks
from onebit.methods.gptq import GPTQConfig

TEXT = ("Once upon a time there was a little girl named Lily. She liked to play in the park with "
        "her dog. One day the dog found a big red ball under a tree, and they played all day. ") * 60


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, fp_260k, tok_260k):
    d = tmp_path_factory.mktemp("sb")
    src = d / "src"
    fp_260k.save_pretrained(src, max_shard_size="300KB")
    tok_260k.save_pretrained(src)
    calib = d / "train.txt"
    calib.write_text(TEXT)
    return src, calib


def test_stream_gptq_equals_in_memory(sharded, fp_260k, tok_260k, tmp_path):
    src, calib = sharded
    assert len(list(src.glob("model-*.safetensors"))) > 1
    cfg = GPTQConfig(bits=3, group_size=32, calib_file=str(calib), calib_samples=4, calib_seqlen=64)
    led = stream_quantize_blocks(src, tmp_path / "s", cfg, progress=False)
    assert (tmp_path / "s" / "model.safetensors.index.json").is_file()
    ids = file_samples(tok_260k, str(calib), 4, 64, 0)
    mem = onebit.quantize(copy.deepcopy(fp_260k), GPTQConfig(bits=3, group_size=32), progress=False,
                          calib_ids=ids)
    streamed = onebit.load(tmp_path / "s")
    msd, ssd = mem.state_dict(), streamed.state_dict()
    for k, v in msd.items():
        assert torch.allclose(ssd[k].float(), v.float(), rtol=1e-4, atol=1e-5), k
    x = torch.randint(0, 512, (1, 32))
    assert torch.allclose(mem(x).logits, streamed(x).logits, rtol=1e-4, atol=1e-4)
    assert led.summary()["quantized_modules"] == 35


def test_stream_gptq_needs_calib_file(sharded, tmp_path):
    src, _ = sharded
    with pytest.raises(OneBitError, match="--calib-file"):
        stream_quantize_blocks(src, tmp_path / "s", GPTQConfig(bits=4), progress=False)
    assert not (tmp_path / "s").exists()


def test_cli_streaming_gptq(sharded, tmp_path):
    src, calib = sharded
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "quantize", str(src), str(tmp_path / "o"),
                        "--method", "gptq", "--bits", "4", "--streaming", "--calib-file", str(calib),
                        "--calib-samples", "2", "--calib-seqlen", "32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "(streaming)" in r.stdout
