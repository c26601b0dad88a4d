import copy
import json
import struct

import pytest
import torch

import onebit
from onebit.errors import CheckpointError, OneBitError
from onebit.formats.checkpoint import read_safetensors_header
from onebit.loading import checkpoint_ledger


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory, fp_260k, tok_260k, stories260k):
    q = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)
    out = tmp_path_factory.mktemp("ck") / "packed"
    onebit.save(q, out, tokenizer=tok_260k, source=stories260k)
    return q, out


def test_save_load_same_logits(packed_dir):
    q, out = packed_dir
    q2 = onebit.load(out)
    x = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        assert torch.equal(q(x).logits, q2(x).logits)
    assert type(q2.model.layers[0].mlp.down_proj).__name__ == "OneBitLinear"
    # stories260K's FFN is 172 wide: down_proj in_features=172 pads to 22 bytes
    assert q2.model.layers[0].mlp.down_proj.weight_packed.shape == (64, 22)


def test_files_written(packed_dir):
    _, out = packed_dir
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "onebit" and qc["format_version"] == 1  # no quantized embeddings: version 1
    assert qc["method"] == "onebit" and len(qc["modules"]) == 5 * 7
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp dirs left


def test_ledger_agrees_with_file_size(packed_dir):
    _, out = packed_dir
    led = checkpoint_ledger(out)
    f = out / "model.safetensors"
    n, _ = read_safetensors_header(f)
    assert led.total_bits // 8 == f.stat().st_size - 8 - n
    assert led.bits_by_category()["head"] == 0  # tied to the embedding: stored once
    assert 1.0 < led.bits_per_linear_weight < 1.5


def test_packed_much_smaller_than_fp(packed_dir, stories260k):
    from pathlib import Path

    _, out = packed_dir
    fp_lin = sum(o * i for o, i in checkpoint_ledger(out).modules.values()) * 32
    assert checkpoint_ledger(out).bits_by_category()["quantized"] < fp_lin / 20


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors(packed_dir, tmp_path):
    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        onebit.load(bad)


def test_header_that_lies(packed_dir, tmp_path):
    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    k = next(k for k in header if k.endswith("weight_packed"))
    header[k]["shape"][0] += 1
    hb = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    with pytest.raises(CheckpointError, match=k.replace(".", r"\.")):
        onebit.load(bad)


def test_newer_format_version_refused(packed_dir, tmp_path):
    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = onebit.FORMAT_VERSION + 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="newer"):
        onebit.load(bad)


def test_other_quant_method_refused(packed_dir, tmp_path):
    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["quant_method"] = "gptq"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="gptq"):
        onebit.load(bad)


def test_missing_tensor(packed_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    sd = load_file(bad / "model.safetensors")
    sd.pop("model.layers.0.mlp.up_proj.h")
    save_file(sd, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match="up_proj.h"):
        onebit.load(bad)


def test_save_refuses_existing_without_overwrite(packed_dir):
    q, out = packed_dir
    with pytest.raises(OneBitError, match="--overwrite"):
        onebit.save(q, out)


def test_failed_write_leaves_nothing(packed_dir, tmp_path, monkeypatch):
    import safetensors.torch as st

    q, _ = packed_dir

    def boom(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError):
        onebit.save(q, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_quantize_model_without_linears():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(4, 4)

    with pytest.raises(OneBitError, match="no linear"):
        onebit.quantize(Tiny(), onebit.OneBitConfig(), progress=False)


def test_nan_weight_refused(fp_260k):
    m = copy.deepcopy(fp_260k)
    with torch.no_grad():
        m.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
    with pytest.raises(OneBitError, match="layers.1.self_attn.q_proj"):
        onebit.quantize(m, onebit.OneBitConfig(), progress=False)


def _rewrite(bad, edit):
    from safetensors.torch import load_file, save_file

    sd = load_file(bad / "model.safetensors")
    edit(sd)
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt", "onebit_format_version": "1"})


@pytest.mark.parametrize("edit,msg", [
    (lambda sd: sd.__setitem__("model.layers.0.mlp.down_proj.weight_packed",
                               sd["model.layers.0.mlp.down_proj.weight_packed"][:, :-1].contiguous()), "shape"),
    (lambda sd: sd.pop("model.layers.0.mlp.up_proj.h"), "missing tensor 'model.layers.0.mlp.up_proj.h'"),
    (lambda sd: sd.__setitem__("model.layers.0.extra", torch.zeros(3)), "model.layers.0.extra"),
])
def test_ledger_validates_what_it_summarises(packed_dir, tmp_path, edit, msg):
    """A well-formed file whose tensors do not fit the model: the ledger (and info) refuse it, as load does."""
    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    _rewrite(bad, edit)
    with pytest.raises(CheckpointError, match=msg):
        onebit.load(bad)
    with pytest.raises(CheckpointError, match=msg):
        checkpoint_ledger(bad)


def test_ledger_refuses_wrong_module_shapes_in_config(packed_dir, tmp_path):
    _, out = packed_dir
    bad = _copy(out, tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["modules"]["model.layers.0.mlp.down_proj"] = [64, 999]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="down_proj"):
        checkpoint_ledger(bad)


_KILLED_WRITER = r"""
import sys, time
import safetensors.torch as st
import onebit
from onebit.models import load_model

real = st.save_file

def slow(*a, **k):
    real(*a, **k)
    print("writing", flush=True)
    time.sleep(600)

st.save_file = slow
q = onebit.quantize(load_model(sys.argv[1]), onebit.OneBitConfig(), progress=False)
onebit.save(q, sys.argv[2])
"""


def test_kill_during_write_then_rerun_leaves_no_temporaries(packed_dir, stories260k, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    q, _ = packed_dir
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, stories260k, str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    left = [x.name for x in tmp_path.iterdir()]
    assert not out.exists() and len(left) == 1 and left[0].startswith(".out.tmp-"), left
    # a temporary of a process still running is left alone
    live = tmp_path / f".out.tmp-{os.getpid()}-abcdefgh"
    live.mkdir()
    onebit.save(q, out)
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["out", live.name])
    assert onebit.checkpoint_ledger(out).total_bits > 0


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_written_with_the_umask_mode(packed_dir, tmp_path, umask):
    import os

    q, _ = packed_dir
    old = os.umask(umask)
    try:
        onebit.save(q, tmp_path / "out")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~umask, modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_existing_output_error_names_the_python_argument(packed_dir):
    q, out = packed_dir
    with pytest.raises(OneBitError, match=r"overwrite=True") as e:
        onebit.save(q, out)
    assert "--overwrite" in str(e.value)  # the CLI's name too: one message serves both callers
