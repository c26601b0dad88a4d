"""Quantized embeddings / head end to end: quantize, save, load, from_pretrained, ledger, CLI, export."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import onebit
from onebit.embeddings import EmbedQuantConfig
from onebit.errors import CheckpointError, OneBitError
from onebit.formats.checkpoint import read_safetensors_header
from onebit.loading import checkpoint_ledger, load_checkpoint
from onebit.methods.blockquant import num_groups
from onebit.methods.rtn import RTNConfig

KINDS = ["int8", "int4", "int2", "q1"]


@pytest.fixture(scope="module", params=KINDS)
def tied_ckpt(request, tmp_path_factory, fp_260k, tok_260k, stories260k):
    q = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False, embed=request.param)
    out = tmp_path_factory.mktemp("emb") / request.param
    led = onebit.save(q, out, tokenizer=tok_260k, source=stories260k)
    return request.param, q, out, led


def test_round_trip_save_load_and_from_pretrained(tied_ckpt):
    from onebit.integrations.hf import from_pretrained

    kind, q, out, _ = tied_ckpt
    x = torch.randint(0, 512, (2, 30))
    with torch.no_grad():
        want = q(x).logits
        for m in (load_checkpoint(out), from_pretrained(out)):
            assert type(m.model.embed_tokens).__name__ == "QuantEmbedding" and m.model.embed_tokens.kind == kind
            assert m.lm_head.tied and m.lm_head._table() is m.model.embed_tokens   # one table for both
            assert torch.equal(m(x).logits, want)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format_version"] == 2 and qc["embed"]["kind"] == kind
    assert qc["embed"]["modules"]["lm_head"]["tied_to"] == "model.embed_tokens"


def test_tied_head_uses_the_quantized_table(tied_ckpt):
    _, q, _, _ = tied_ckpt
    h = torch.randn(3, 64)
    torch.testing.assert_close(q.lm_head(h), h @ q.model.embed_tokens.dense_weight().T, rtol=1e-5, atol=1e-5)
    names = set(q.state_dict())
    assert "model.embed_tokens.weight_packed" in names and not any(n.startswith("lm_head") for n in names)


def test_ledger_counts_the_real_bits(tied_ckpt):
    kind, _, out, led = tied_ckpt
    bits, group = {"int8": (8, 32), "int4": (4, 32), "int2": (2, 32), "q1": (1, 64)}[kind]
    want = 512 * (64 * bits // 8) * 8 + 512 * num_groups(64, group) * 16
    led2 = checkpoint_ledger(out)
    for L in (led, led2):
        cats = L.bits_by_category()
        assert cats["embedding"] == want and cats["head"] == 0
        assert L.original_weights == sum(o * i for o, i in L.modules.values()) + 512 * 64 + cats["norm"] // 32
        assert L.bits_per_weight == pytest.approx(L.total_bits / L.original_weights)
    f = out / "model.safetensors"
    n, _ = read_safetensors_header(f)
    assert led2.total_bits // 8 == f.stat().st_size - 8 - n
    s = led2.summary()
    assert s["embed_quant"] == kind and s["bits_per_weight_end_to_end"] == led2.bits_per_weight
    assert "end to end" in led2.format()


def test_end_to_end_bits_drop_with_the_embedding(fp_260k, tmp_path):
    fp = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)
    q1 = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False, embed="q1")
    a, b = onebit.save(fp, tmp_path / "a"), onebit.save(q1, tmp_path / "b")
    assert a.original_weights == b.original_weights
    assert b.bits_per_weight < a.bits_per_weight - 1   # fp32 table (32 bits) -> ~1.25 bits
    assert json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]["format_version"] == 1


def _untied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("head", [True, False])
def test_untied_head(tmp_path, head):
    from onebit.integrations.hf import from_pretrained

    m = onebit.quantize(_untied_llama(), RTNConfig(bits=4, group_size=32), progress=False,
                        embed=EmbedQuantConfig("int4", head=head))
    assert type(m.lm_head).__name__ == ("QuantLMHead" if head else "Linear")
    if head:
        assert not m.lm_head.tied
    led = onebit.save(m, tmp_path / "c")
    assert led.bits_by_category()["head"] == (300 * 32 * 8 + 300 * 2 * 16 if head else 300 * 64 * 32)
    x = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        for back in (load_checkpoint(tmp_path / "c"), from_pretrained(tmp_path / "c")):
            assert torch.equal(back(x).logits, m(x).logits)


def _edit_embed(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg["quantization_config"])
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,msg", [
    (lambda qc: qc.update(format_version=3), "newer than this onebit"),
    (lambda qc: qc["embed"].update(kind="int9"), "unknown embedding quantization"),
    (lambda qc: qc["embed"]["modules"]["lm_head"].update(tied_to="nowhere"), "malformed entry"),
    (lambda qc: qc["embed"]["modules"]["model.embed_tokens"].update(shape=[512, 32]), "is not a"),
])
def test_bad_embed_spec_is_one_line(tied_ckpt, tmp_path, edit, msg):
    import shutil

    _, _, out, _ = tied_ckpt
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    _edit_embed(bad, edit)
    for fn in (load_checkpoint, checkpoint_ledger):
        with pytest.raises(CheckpointError, match=msg) as e:
            fn(bad)
        assert "\n" not in str(e.value)


def test_bad_python_settings():
    m = _untied_llama()
    with pytest.raises(OneBitError, match="unknown --embed-quant"):
        onebit.quantize(m, RTNConfig(), progress=False, embed="int3")
    with pytest.raises(OneBitError, match="larger than the embedding rows"):
        onebit.quantize(m, RTNConfig(), progress=False, embed=EmbedQuantConfig("int4", 128))


def run_cli(*args):
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", *map(str, args)],
                       capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout, r.stderr


def test_cli_quantize_and_info(stories260k, tmp_path):
    out = tmp_path / "c"
    rc, so, se = run_cli("quantize", stories260k, out, "--method", "rtn", "--bits", "4", "--group-size", "32",
                         "--embed-quant", "int4", "--embed-group", "16")
    assert rc == 0, se
    assert "end to end (embeddings: int4)" in so
    rc, so, se = run_cli("info", out, "--json")
    s = json.loads(so)
    assert s["embed_quant"] == "int4" and s["quantization_config"]["embed"]["group_size"] == 16
    assert s["bits_per_weight_end_to_end"] == pytest.approx(checkpoint_ledger(out).bits_per_weight)
    rc, so, se = run_cli("info", out)
    assert "embeddings: int4 groups of 16" in so and "end to end:" in so
    for bad, msg in ((["--embed-quant", "q1", "--embed-group", "12"], "multiple of 8"),
                     (["--embed-group", "32"], "needs --embed-quant"),
                     (["--embed-quant", "int4", "--streaming"], "not supported with --streaming")):
        rc, so, se = run_cli("quantize", stories260k, tmp_path / "x", *bad)
        assert rc == 2 and msg in se and len(se.strip().splitlines()) == 1, se


@pytest.mark.parametrize("kind,typ", [("int4", "q4_0"), ("int8", "q8_0")])
def test_export_writes_the_runtime_table_exactly(stories260k, fp_260k, tmp_path, kind, typ):
    """``onebit export --embed-type q4_0`` of an int4 embedding holds exactly onebit's table (the
    Q4_0/Q8_0 rounding re-applied to a table it produced gives back the same codes and scales)."""
    from gguf import GGUFReader

    from onebit.formats import gguf_blocks as gb

    cfg = RTNConfig(bits=4, group_size=32, skip=["lm_head", "down_proj"])   # down_proj: 172 wide, stays F16
    m = onebit.quantize(copy.deepcopy(fp_260k), cfg, progress=False, embed=kind)
    onebit.save(m, tmp_path / "c", source=stories260k)
    onebit.export_gguf(tmp_path / "c", tmp_path / "m.gguf", embed_type=typ)
    t = next(t for t in GGUFReader(str(tmp_path / "m.gguf")).tensors if t.name == "token_embd.weight")
    raw = np.asarray(t.data).reshape(512, -1).view(np.uint8)
    got = gb.DECODERS[typ](raw, 64)
    np.testing.assert_array_equal(got, m.model.embed_tokens.dense_weight(torch.float32).numpy())
