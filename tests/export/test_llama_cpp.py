"""Exported files in llama.cpp itself (llama-cpp-python, the `llamacpp` extra): they load with no
patch, and llama.cpp's logits agree with onebit's on real text.  In CI the extra is required."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from onebit.export.gguf import export_gguf

from .conftest import METHODS, make_checkpoint

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import llama_cpp  # noqa: F401  (CI installs onebit[llamacpp]: a missing build is a failure)
else:
    llama_cpp = pytest.importorskip("llama_cpp")


def llama_cpp_logits(gguf_path, ids: list[int]) -> torch.Tensor:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), logits_all=True, n_ctx=max(64, len(ids)), n_threads=2,
                verbose=False)
    try:
        llm.eval(ids)
        return torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    finally:
        llm.close()


def agreement(ckpt, gguf_path, ids: list[int]) -> tuple[float, float]:
    """(mean KL(onebit ‖ llama.cpp) per token, top-1 agreement) on ``ids``; ``ckpt`` is a
    checkpoint path or a model already loaded."""
    import onebit

    model = onebit.load(ckpt).float().eval() if isinstance(ckpt, (str, os.PathLike)) else ckpt
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float()
    got = llama_cpp_logits(gguf_path, ids)
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    top1 = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    return kl, top1


@pytest.fixture(scope="module")
def story_ids(stories3m, data_dir):
    from onebit.models import load_tokenizer

    text = (data_dir / "tinystories" / "tinystories_val_sample.txt").read_text()[:4000]
    return [1] + load_tokenizer(stories3m)(text).input_ids[1:128]


@pytest.mark.parametrize("name", list(METHODS))
def test_llama_cpp_runs_the_export_and_agrees(tmp_path, s3m_checkpoints, story_ids, name):
    out = tmp_path / f"{name}.gguf"
    export_gguf(s3m_checkpoints[name], out)
    kl, top1 = agreement(s3m_checkpoints[name], out, story_ids)
    # an SVID-initialised student has flat logits, where llama.cpp's 8-bit activations flip
    # near-ties; bench/gguf_agreement.py measures trained models against the targets
    assert kl < 0.01 and top1 > 0.85, (kl, top1)


def test_q1_0_everywhere_on_a_128_multiple_llama(tmp_path, tiny128):
    from onebit.models import load_model

    ck = make_checkpoint(load_model(tiny128), tmp_path / "ck", "onebit", tiny128, foldable=True)
    out = tmp_path / "t.gguf"
    s = export_gguf(ck, out, embed_type="f32")
    assert {t for n, t, *_ in s.tensors if n.startswith("blk.") and "norm" not in n} == {"q1_0"}
    ids = [1] + [int(i) for i in np.random.default_rng(0).integers(3, 4000, 63)]
    kl, top1 = agreement(ck, out, ids)
    assert kl < 0.01 and top1 > 0.85, (kl, top1)


def test_the_tokenizer_round_trips(tmp_path, s3m_checkpoints, stories3m):
    from llama_cpp import Llama

    from onebit.models import load_tokenizer

    out = tmp_path / "tok.gguf"
    export_gguf(s3m_checkpoints["q1_0"], out)
    llm = Llama(model_path=str(out), vocab_only=True, verbose=False)
    try:
        text = "Once upon a time, there was a little girl named Lily. She loved to play outside!"
        assert llm.tokenize(text.encode(), add_bos=True) == load_tokenizer(stories3m)(text).input_ids
    finally:
        llm.close()


def test_a_model_read_from_gguf_keeps_its_tokenizer(tmp_path, stories3m, data_dir):
    """GGUF in → quantize → export: the SentencePiece tokenizer survives the trip through
    transformers' tokenizer.json (its scores rebuilt from the merge ranks)."""
    from llama_cpp import Llama

    from onebit.cli.main import main
    from onebit.models import load_tokenizer

    export_gguf(stories3m, tmp_path / "fp.gguf")
    assert main(["quantize", str(tmp_path / "fp.gguf"), str(tmp_path / "ck"), "--method", "q1_0", "-q"]) == 0
    export_gguf(tmp_path / "ck", tmp_path / "q.gguf")
    llm = Llama(model_path=str(tmp_path / "q.gguf"), vocab_only=True, verbose=False)
    tok = load_tokenizer(stories3m)
    try:
        lines = [ln for ln in (data_dir / "tinystories" / "tinystories_val_sample.txt").read_text()[:8000]
                 .splitlines() if ln.strip()]
        assert lines and all(llm.tokenize(ln.encode(), add_bos=True) == tok(ln).input_ids for ln in lines)
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_other_architectures(tmp_path, stories3m, arch):
    """Qwen2 (q/k/v biases, NEOX RoPE: no q/k permutation) and Mistral (written as llama)."""
    import shutil

    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from onebit.export.verify import dense_model_from_gguf
    from onebit.models import load_model

    C, M = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}[arch]
    torch.manual_seed(0)
    cfg = C(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2)
    model = M(cfg)
    with torch.no_grad():                    # weights with spread, so the logits are not flat
        for n, p in model.named_parameters():
            if p.dim() == 2 or n.endswith(".bias"):
                p.normal_(0, 0.08 if p.dim() == 2 else 0.5)
    src = tmp_path / arch
    model.save_pretrained(src)
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(f"{stories3m}/{f}", src / f)
    ck = make_checkpoint(load_model(str(src)), tmp_path / "ck", "onebit", str(src), foldable=True)
    out = tmp_path / f"{arch}.gguf"
    export_gguf(ck, out, embed_type="f32")
    import onebit

    m = onebit.load(ck).float().eval()
    ids = [1] + [int(i) for i in np.random.default_rng(0).integers(3, 4000, 63)]
    with torch.no_grad():
        dense = dense_model_from_gguf(out, m.config)
        assert (dense(torch.tensor([ids])).logits - m(torch.tensor([ids])).logits).abs().max() < 1e-3
    kl, top1 = agreement(ck, out, ids)
    assert kl < 0.01 and top1 > 0.9, (kl, top1)


def test_q6_k_embeddings_run_in_llama_cpp(tmp_path, tiny128):
    """--embed-type q6_k (rows of 256): llama.cpp loads it and computes what onebit's own
    decoding of the file computes."""
    import onebit
    from onebit.export.verify import dense_model_from_gguf
    from onebit.models import load_model

    ck = make_checkpoint(load_model(tiny128), tmp_path / "ck", "onebit", tiny128, foldable=True)
    out = tmp_path / "q6.gguf"
    s = export_gguf(ck, out, embed_type="q6_k")
    types = {n: t for n, t, *_ in s.tensors}
    assert types["token_embd.weight"] == "q6_k" and types["output.weight"] == "q6_k"   # untied head
    assert not any("not a multiple" in n for n in s.notes)
    ids = [1] + [int(i) for i in np.random.default_rng(0).integers(3, 4000, 63)]
    dense = dense_model_from_gguf(out, onebit.load(ck).config)
    kl, top1 = agreement(dense, out, ids)
    assert kl < 0.01 and top1 > 0.9, (kl, top1)


def test_q6_k_bytes_are_llama_cpp_quantizer_bytes(tmp_path, tiny128):
    """llama.cpp's own quantizer (llama_model_quantize, Q6_K) on an f32 export writes exactly the
    bytes onebit's encoder writes, for every tensor it makes Q6_K."""
    import ctypes

    from onebit.export.verify import read_tensors
    from onebit.formats import gguf_blocks as gb
    from onebit.formats.gguf_header import read_gguf_header

    src, dst = tmp_path / "f32.gguf", tmp_path / "q6.gguf"
    export_gguf(tiny128, src, embed_type="f32")          # unquantized: f16 linears, f32 embedding/head
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K
    p.token_embedding_type = p.output_tensor_type = gb.TYPES["q6_k"][0]
    p.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p)) == 0
    h = read_gguf_header(dst)
    dense = read_tensors(src)
    data = np.memmap(dst, dtype=np.uint8, mode="r")
    checked = []
    for t in h.tensors:
        if t.type_name != "q6_k":
            continue
        raw = np.asarray(data[h.data_start + t.offset: h.data_start + t.offset + t.n_bytes])
        mine = gb.encode_q6_k(dense[t.name])
        assert np.array_equal(raw.reshape(mine.shape), mine), t.name
        checked.append(t.name)
    assert {"token_embd.weight", "output.weight", "blk.0.ffn_down.weight"} <= set(checked)
