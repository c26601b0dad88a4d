"""Check an exported GGUF against the checkpoint it came from, without llama.cpp.

:func:`dense_from_gguf` decodes every tensor of the file with the exact block decoders and
undoes the q/k row permutation, giving the Hugging Face state dict the file stands for;
loaded into the checkpoint's architecture it must compute what the onebit model computes
(up to float rounding of the folded scales).  The tests use it to tell a folding/encoding
bug from llama.cpp's own activation rounding; ``bench/gguf_agreement.py`` then measures
llama.cpp itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..formats import gguf_blocks as gb
from ..formats.gguf_header import read_gguf_header
from .gguf import qk_permutation

_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as float32 ``[rows, cols]`` (or ``[n]``), decoded exactly."""
    h = read_gguf_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for t in h.tensors:
        raw = np.asarray(data[h.data_start + t.offset: h.data_start + t.offset + t.n_bytes])
        cols = t.shape[0]
        rows = t.n_weights // cols
        name = t.type_name
        if name == "f32":
            a = raw.view("<f4").astype(np.float32)
        elif name == "f16":
            a = raw.view("<f2").astype(np.float32)
        else:
            a = gb.DECODERS[name](raw.reshape(rows, -1), cols)
        out[t.name] = a.reshape(rows, cols) if len(t.shape) > 1 else a.reshape(cols)
    return out


def dense_from_gguf(path: str | Path, config) -> dict[str, torch.Tensor]:
    """The Hugging Face (Llama-family) state dict an exported GGUF stands for."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    meta = read_gguf_header(path).metadata
    arch = meta.get("general.architecture")
    d = config.hidden_size
    dp = int(meta.get(f"{arch}.embedding_length", d))
    sd = {}
    for name, a in read_tensors(path).items():
        if dp != d:     # undo the zero-channel padding of the hidden size (see export.gguf)
            kind = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
            if kind.endswith("norm"):
                a = a[:d] * np.sqrt(dp / d)
            elif kind in ("attn_output", "ffn_down"):
                a = a[:d]
            elif a.ndim == 2:
                a = a[:, :d]
        t = torch.from_numpy(np.ascontiguousarray(a))
        if name == "token_embd.weight":
            sd["model.embed_tokens.weight"] = t
            continue
        if name == "output_norm.weight":
            sd["model.norm.weight"] = t
            continue
        if name == "output.weight":
            sd["lm_head.weight"] = t
            continue
        _, i, kind, what = name.split(".")
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            perm = qk_permutation(t.shape[0], heads if kind == "attn_q" else kv)
            inv = np.argsort(perm)
            t = t[torch.from_numpy(inv)]
        sd[f"model.layers.{i}.{_NAMES[kind]}.{what}"] = t
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def dense_model_from_gguf(path: str | Path, config):
    """An fp32 ``AutoModelForCausalLM`` of ``config``'s architecture holding the GGUF's weights."""
    from transformers import AutoModelForCausalLM

    cfg = config.__class__.from_dict(config.to_dict())
    cfg.quantization_config = None
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(dense_from_gguf(path, config), strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq") and m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"GGUF does not match the architecture: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()
