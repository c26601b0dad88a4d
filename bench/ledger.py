"""Bit ledger of real packed checkpoints: stories3M and a Llama-2-7B-shaped layer set.

For each, the ledger is computed from the tensors actually written and checked
against the safetensors file size (header aside).  The Llama-2-7B set is
32 decoder layers × (q,k,v,o 4096×4096; gate,up 11008×4096; down 4096×11008)
with fp16 embeddings and an untied fp16 lm_head (vocab 32000); to keep it
small on disk one decoder layer is written and its ledger multiplied by 32
(every layer has the same tensors).

    python bench/ledger.py [--model ../shared/models/stories3M]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

import onebit
from onebit.formats.checkpoint import read_safetensors_header
from onebit.loading import checkpoint_ledger
from onebit.models import load_model, load_tokenizer


def check_file(ck: Path) -> int:
    f = ck / "model.safetensors"
    n, _ = read_safetensors_header(f)
    return f.stat().st_size - 8 - n


def llama7b_layer_set(tmp: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=1,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      tie_word_embeddings=False, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float16)
    onebit.quantize(model, onebit.OneBitConfig(), progress=False)
    onebit.save(model, tmp / "l7b")
    led = checkpoint_ledger(tmp / "l7b")
    on_disk = check_file(tmp / "l7b")
    cats = led.bits_by_category()
    layers = 32
    q = cats["quantized"] * layers
    n_w = led.original_linear_weights * layers
    print("== Llama-2-7B layer set (1 layer written, x32)")
    print(f"   ledger of the written file equals its tensor bytes: {led.total_bits // 8 == on_disk}")
    for name, (bits, bpw) in led.per_module().items():
        print(f"   {name:34s} {bits:>12,d} bits  {bpw:.4f} bits/weight")
    print(f"   quantized linears x32 : {q:>16,d} bits = {q / 8 / 2**30:.3f} GiB "
          f"for {n_w:,d} weights -> {q / n_w:.4f} bits/weight")
    fp16 = n_w * 16
    print(f"   same linears in fp16  : {fp16 / 8 / 2**30:.3f} GiB ({fp16 / q:.1f}x larger)")
    emb = cats["embedding"] + cats["head"]
    total = q + emb + cats["norm"] * layers
    print(f"   + fp16 embeddings/head {emb / 8 / 2**30:.3f} GiB, norms -> whole model "
          f"{total / 8 / 2**30:.3f} GiB ({total / (n_w + 2 * 32000 * 4096):.3f} bits/param)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="../shared/models/stories3M")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fp = load_model(args.model)
        q = onebit.quantize(copy.deepcopy(fp), onebit.OneBitConfig(), progress=False)
        onebit.save(q, tmp / "s", tokenizer=load_tokenizer(args.model), source=args.model)
        led = checkpoint_ledger(tmp / "s")
        print(f"== {args.model}")
        print(led.format())
        print(f"   ledger total == safetensors bytes minus header: {led.total_bits // 8 == check_file(tmp / 's')}")
        fp_bytes = sum(p.numel() * p.element_size() for p in fp.parameters())
        print(f"   fp32 parameters {fp_bytes / 2**20:.2f} MiB -> packed {led.total_bits / 8 / 2**20:.2f} MiB "
              f"({fp_bytes * 8 / led.total_bits:.1f}x smaller; embeddings dominate this tiny model)")
        llama7b_layer_set(tmp)


if __name__ == "__main__":
    main()
