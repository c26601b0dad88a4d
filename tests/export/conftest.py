"""Checkpoints to export: stories3M in each exportable method, and a tiny random Llama whose
dimensions are multiples of 128 (every linear fits Q1_0)."""
from __future__ import annotations

import shutil

import pytest
import torch

from onebit.export.spec import PRESETS as METHODS  # noqa: F401  (the tests parametrize over it)
from onebit.export.spec import save_quantized as make_checkpoint


@pytest.fixture(scope="session")
def fp_3m(stories3m):
    from onebit.models import load_model

    return load_model(stories3m)


@pytest.fixture(scope="session")
def s3m_checkpoints(tmp_path_factory, fp_3m, stories3m):
    d = tmp_path_factory.mktemp("s3m_ckpt")
    return {name: make_checkpoint(fp_3m, d / name, method, stories3m, **kw)
            for name, (method, kw) in METHODS.items()}


@pytest.fixture(scope="session")
def tiny128(tmp_path_factory, stories3m):
    """A random Llama (hidden 256, ffn 512, 4 heads of 64, 2 KV heads, untied head) with
    stories3M's tokenizer, as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny128") / "model"
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(f"{stories3m}/{f}", d / f)
    return str(d)
