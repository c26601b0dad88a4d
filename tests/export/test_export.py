"""`onebit export`: exact GGUF tensors, the folding of OneBit's scales, errors (no llama.cpp needed:
the file is decoded with the exact block decoders into a dense model and run in torch)."""
from __future__ import annotations

import pytest
import torch

from onebit.errors import OneBitError
from onebit.export.gguf import export_gguf
from onebit.export.verify import dense_model_from_gguf
from onebit.formats.gguf_header import read_gguf_header

from .conftest import METHODS, make_checkpoint


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("name", list(METHODS))
def test_exported_weights_compute_what_onebit_computes(tmp_path, s3m_checkpoints, name):
    import onebit

    out = tmp_path / f"{name}.gguf"
    export_gguf(s3m_checkpoints[name], out, embed_type="f32")
    model = onebit.load(s3m_checkpoints[name]).float().eval()
    dense = dense_model_from_gguf(out, model.config)
    ids = torch.randint(3, 4000, (1, 48), generator=torch.Generator().manual_seed(0))
    a, b = _logits(model, ids), _logits(dense, ids)
    # exact but for float rounding: of the folded norms (onebit), of the per-tensor fp32 scale to
    # fp16 (bitnet, ternary: relative 2^-11)
    tol = 3e-2 if name in ("bitnet", "ternary") else 1e-3
    assert (a - b).abs().max().item() < tol


def test_types_per_row_length(tmp_path, s3m_checkpoints):
    out = tmp_path / "s3m.gguf"
    s = export_gguf(s3m_checkpoints["onebit-foldable"], out, pad="off")
    types = {n: t for n, t, *_ in s.tensors}
    assert types["blk.0.ffn_down.weight"] == "q1_0"        # rows of 512
    assert types["blk.0.attn_q.weight"] == "q2_0"          # rows of 192: Q1_0 and TQ2_0 cannot
    assert types["token_embd.weight"] == "f16" and types["blk.0.attn_norm.weight"] == "f32"
    h = read_gguf_header(out)
    assert {t.name: t.type_name for t in h.tensors} == types
    assert h.metadata["general.architecture"] == "llama" and h.metadata["llama.block_count"] == 6
    assert h.metadata["llama.embedding_length"] == 192
    assert "end to end" in s.format()


def test_padding_the_hidden_size_puts_its_rows_in_q1_0(tmp_path, s3m_checkpoints):
    out = tmp_path / "pad.gguf"
    s = export_gguf(s3m_checkpoints["onebit-foldable"], out, pad="on")      # 192 -> 256
    types = {n: t for n, t, *_ in s.tensors}
    assert types["blk.0.attn_q.weight"] == "q1_0" and types["blk.0.ffn_up.weight"] == "q1_0"
    assert types["blk.0.attn_output.weight"] == "q2_0"            # reads the 192 attention channels
    h = read_gguf_header(out)
    assert h.metadata["llama.embedding_length"] == 256
    assert h.metadata["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5 * 192 / 256)
    assert any("padded" in n for n in s.notes)
    unpadded = export_gguf(s3m_checkpoints["onebit-foldable"], tmp_path / "np.gguf", pad="off")
    lin = lambda n: n.startswith("blk.") and "norm" not in n  # noqa: E731
    assert s.bits_per_weight(lin) < unpadded.bits_per_weight(lin)   # counted per original weight
    assert s.weights() == unpadded.weights()
    auto = export_gguf(s3m_checkpoints["onebit-foldable"], tmp_path / "auto.gguf")
    assert auto.total_bytes == min(s.total_bytes, unpadded.total_bytes)   # stories3M: no padding pays


def test_every_linear_is_q1_0_when_rows_fit(tmp_path, tiny128):
    from onebit.models import load_model

    ck = make_checkpoint(load_model(tiny128), tmp_path / "ck", "onebit", tiny128, foldable=True)
    s = export_gguf(ck, tmp_path / "t.gguf", embed_type="q8_0")
    types = {n: t for n, t, *_ in s.tensors}
    lin = [t for n, t in types.items() if n.startswith("blk.") and "norm" not in n]
    assert set(lin) == {"q1_0"} and types["output.weight"] == "q8_0"
    s2 = export_gguf(ck, tmp_path / "t2.gguf", weight_type="tq2_0")
    assert {t for n, t, *_ in s2.tensors if n.startswith("blk.") and "norm" not in n} == {"tq2_0"}
    model = __import__("onebit").load(ck).float().eval()
    dense = dense_model_from_gguf(tmp_path / "t2.gguf", model.config)
    ids = torch.randint(3, 4000, (1, 32))
    assert (_logits(model, ids) - _logits(dense, ids)).abs().max().item() < 1e-2  # embeddings in f16


def test_free_onebit_is_refused_with_the_way_out(tmp_path, fp_3m, stories3m):
    ck = make_checkpoint(fp_3m, tmp_path / "free", "onebit", stories3m)
    with pytest.raises(OneBitError, match="--foldable"):
        export_gguf(ck, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    s = export_gguf(ck, tmp_path / "approx.gguf", approximate=True)
    assert s.total_bytes > 0


@pytest.mark.parametrize("method,kw,match", [
    ("rtn", {"bits": 3, "group_size": 64}, "Q4_0"),
    ("onebit-w1a8", {}, "no exact llama.cpp form"),
])
def test_methods_without_an_exact_llama_cpp_form(tmp_path, fp_3m, stories3m, method, kw, match):
    ck = make_checkpoint(fp_3m, tmp_path / "ck", method, stories3m, **kw)
    with pytest.raises(OneBitError, match=match):
        export_gguf(ck, tmp_path / "x.gguf")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".x.gguf*")) == []


def test_rows_that_fit_no_type(tmp_path, fp_260k, stories260k):
    ck = make_checkpoint(fp_260k, tmp_path / "ck", "q1_0", stories260k)
    with pytest.raises(OneBitError, match="fit none"):       # stories260K's down_proj reads 172
        export_gguf(ck, tmp_path / "x.gguf")


def test_existing_output_and_bad_input(tmp_path, s3m_checkpoints, stories3m):
    out = tmp_path / "o.gguf"
    out.write_text("keep me")
    with pytest.raises(OneBitError, match="overwrite"):
        export_gguf(s3m_checkpoints["q1_0"], out)
    assert out.read_text() == "keep me"
    export_gguf(s3m_checkpoints["q1_0"], out, overwrite=True)
    assert out.read_bytes()[:4] == b"GGUF"
    s = export_gguf(stories3m, tmp_path / "fp.gguf")            # unquantized: F16 linears
    assert {t for n, t, *_ in s.tensors if n.startswith("blk.") and "norm" not in n} == {"f16"}
    with pytest.raises(OneBitError, match="does not exist"):
        export_gguf(tmp_path / "nope", tmp_path / "y.gguf")
    with pytest.raises(OneBitError, match="already a GGUF"):
        export_gguf(tmp_path / "fp.gguf", tmp_path / "y.gguf")
    with pytest.raises(OneBitError, match="weight-type"):
        export_gguf(s3m_checkpoints["q1_0"], tmp_path / "y.gguf", weight_type="q3_k")


def test_architecture_llama_cpp_export_lacks(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    src = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=128, n_positions=64)).save_pretrained(src)
    from onebit.models import load_model

    ck = make_checkpoint(load_model(str(src)), tmp_path / "ck", "bitnet", str(src), act_bits=0)
    with pytest.raises(OneBitError, match="supports llama, mistral, qwen2"):
        export_gguf(ck, tmp_path / "x.gguf")


def test_cli_one_line_errors(tmp_path, s3m_checkpoints, capsys):
    from onebit.cli.main import main

    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onebit: error:")
    assert main(["export", s3m_checkpoints["ternary"], str(tmp_path / "t.gguf"), "-q"]) == 0
    assert "tq2_0" in capsys.readouterr().out or True
    assert main(["info", str(tmp_path / "t.gguf")]) == 0
    assert "bits/weight" in capsys.readouterr().out


def test_q6_k_embeddings_and_the_fallback_for_rows_of_192(tmp_path, s3m_checkpoints, caplog):
    import logging

    import numpy as np

    from onebit.export.verify import read_tensors
    from onebit.formats import gguf_blocks as gb

    ck = s3m_checkpoints["q1_0"]
    with caplog.at_level(logging.WARNING, logger="onebit"):
        s = export_gguf(ck, tmp_path / "fb.gguf", embed_type="q6_k", pad="off")   # tied, rows of 192
    types = {n: t for n, t, *_ in s.tensors}
    assert types["token_embd.weight"] == "q8_0"       # llama.cpp's own fallback for Q6_K
    assert any("not a multiple of 256" in n and "Q8_0" in n for n in s.notes)
    assert "not a multiple of 256" in s.format()
    assert sum("not a multiple of 256" in r.getMessage() for r in caplog.records) == 1

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="onebit"):
        s = export_gguf(ck, tmp_path / "q6.gguf", embed_type="q6_k", pad="on")  # 192 -> 256: fits
    assert {n: t for n, t, *_ in s.tensors}["token_embd.weight"] == "q6_k"
    assert not any("not a multiple" in n for n in s.notes)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert read_gguf_header(tmp_path / "q6.gguf").tensors[0].type_name == "q6_k"
    model = __import__("onebit").load(ck).float().eval()
    emb = model.model.embed_tokens.weight.detach().float().numpy()
    padded = np.concatenate([emb, np.zeros((emb.shape[0], 64), np.float32)], axis=1)
    got = read_tensors(tmp_path / "q6.gguf")["token_embd.weight"]
    np.testing.assert_array_equal(got, gb.decode_q6_k(gb.encode_q6_k(padded), 256))
    assert not got[:, 192:].any()
    rel = np.sqrt(((got[:, :192] - emb) ** 2).mean()) / emb.std()
    assert 0 < rel < 0.03, rel
    dense = dense_model_from_gguf(tmp_path / "q6.gguf", model.config)
    ids = torch.randint(3, 4000, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = _logits(model, ids)[0], _logits(dense, ids)[0]
    lp, lq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    # the 6-bit rounding of the embedding (and the tied head) only: KL 0.005 here, q8_0 0.0002
    assert 0 < kl < 0.02 and top1 >= 0.9, (kl, top1)


def test_a_checkpoint_with_lora_adapters_is_refused(tmp_path, s3m_checkpoints):
    """llama.cpp's 1-bit types cannot hold a LoRA adapter: export names the way out, writes nothing."""
    import onebit
    from onebit.distill.finetune import FinetuneConfig, finetune

    model = onebit.load(s3m_checkpoints["q1_0"])
    ids = torch.randint(0, model.config.vocab_size, (400,), generator=torch.Generator().manual_seed(0))
    finetune(model, model.config.quantization_config, ids[:300], ids[300:],
             FinetuneConfig(rank=2, alpha=4, targets=("q_proj",), steps=1, seqlen=32, batch_size=2, warmup=0))
    onebit.save(model, tmp_path / "ft")
    with pytest.raises(OneBitError, match="LoRA adapters"):
        export_gguf(tmp_path / "ft", tmp_path / "x.gguf")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".x.gguf*")) == []


# ------------------------------------------------------------ rank-k and MoS: --approximate only
def _tie_to_rank_1(model, mos: bool):
    """Make every rank-k / MoS layer of ``model`` a foldable OneBit layer in disguise: one scale
    component (or all experts equal), input scales shared by q/k/v and by gate/up, and o_proj's
    equal across the query heads of a KV group.  The approximate export is then exact."""
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // heads
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            groups = [[a.q_proj, a.k_proj, a.v_proj], [m.gate_proj, m.up_proj], [a.o_proj], [m.down_proj]]
            for mods in groups:
                # uneven input scales (a random init's are nearly flat), some negative
                g = mods[0].g[0].float() * torch.randn(mods[0].in_features, generator=gen).mul(0.7).exp()
                g[::7] *= -1
                if mods[0] is a.o_proj:          # equal within each KV group
                    g = g.reshape(kv, heads // kv, hd).mean(1, keepdim=True).expand(-1, heads // kv, -1).reshape(-1)
                for mod in mods:
                    h = mod.h[0].float().clone()
                    if mos:                      # every expert the same: the router cannot matter
                        mod.g.copy_(g.expand_as(mod.g))
                        mod.h.copy_(h.expand_as(mod.h))
                        mod.router.copy_(torch.randn(mod.router.shape, generator=gen))
                    else:
                        mod.g.zero_()
                        mod.h.zero_()
                        mod.g[0] = g
                        mod.h[0] = h


@pytest.mark.parametrize("method,kw", [("onebit-rank", {"rank": 2}), ("onebit-mos", {"experts": 3})])
def test_rank_and_mos_export_only_approximately(tmp_path, tiny128, method, kw):
    import onebit
    from onebit.formats.checkpoint import save_checkpoint
    from onebit.models import load_model, load_tokenizer

    ck = make_checkpoint(load_model(tiny128), tmp_path / "ck", method, tiny128, **kw)
    with pytest.raises(OneBitError, match="--approximate"):
        export_gguf(ck, tmp_path / "x.gguf")
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".x.gguf*")) == []

    # a general rank-2 / MoS layer: every linear in Q1_0, the approximation named in the notes
    s = export_gguf(ck, tmp_path / "a.gguf", approximate=True, embed_type="f32")
    assert {t for n, t, *_ in s.tensors if n.startswith("blk.") and "norm" not in n} == {"q1_0"}
    assert any(n.startswith("approximate") for n in s.notes)

    # rank 1 in disguise, tied as --foldable ties: the export computes what onebit computes
    model = onebit.load(ck).eval()
    _tie_to_rank_1(model, mos=method == "onebit-mos")
    save_checkpoint(model, tmp_path / "tied", source=tiny128, tokenizer=load_tokenizer(tiny128))
    model = onebit.load(tmp_path / "tied").float().eval()
    export_gguf(tmp_path / "tied", tmp_path / "t.gguf", approximate=True, embed_type="f32")
    dense = dense_model_from_gguf(tmp_path / "t.gguf", model.config)
    ids = torch.randint(3, 4000, (1, 32), generator=torch.Generator().manual_seed(0))
    a, b = _logits(model, ids), _logits(dense, ids)
    assert (a - b).abs().max().item() < 2e-3 * a.abs().max().item()
    # and the untied layers of the general checkpoint are not: the test can tell
    general = onebit.load(ck).float().eval()
    dense_a = dense_model_from_gguf(tmp_path / "a.gguf", general.config)
    assert (_logits(general, ids) - _logits(dense_a, ids)).abs().max().item() > 1e-2 * a.abs().max().item()
