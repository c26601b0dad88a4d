"""Ledger of a SmolLM2-135M-shaped model (meta device, shapes only) as OneBit --foldable / RTN W4 g32
with each embedding setting: the same ledger functions `onebit save` / `onebit info` use."""
import torch, onebit
from transformers import LlamaConfig, LlamaForCausalLM
from onebit.surgery import find_linears, prepare_empty
from onebit.formats.ledger import ledger_from_specs
from onebit.formats.packing import packed_cols
from onebit.methods.blockquant import KINDS, num_groups
from onebit.methods.rtn import RTNConfig
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
for name, qcfg in (("onebit-foldable", onebit.OneBitConfig(foldable=True)), ("rtn-w4-g32", RTNConfig(bits=4, group_size=32))):
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in m.parameters())
    qc = qcfg.to_dict(); qc["modules"] = {n: [l.out_features, l.in_features] for n, l in find_linears(m, qcfg.skip)}
    prepare_empty(m, qc)
    base = {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items() if k != "lm_head.weight"}
    for kind in ("none", "int8", "int4", "int2", "q1"):
        specs = dict(base); embed = None
        if kind != "none":
            bits, g = KINDS[kind]
            del specs["model.embed_tokens.weight"]
            specs["model.embed_tokens.weight_packed"] = ((49152, packed_cols(576, bits)), torch.uint8)
            specs["model.embed_tokens.scales"] = ((49152, num_groups(576, g)), torch.float16)
            embed = {"kind": kind, "group_size": g, "modules": {"model.embed_tokens": {"role": "embedding", "shape": [49152, 576]},
                     "lm_head": {"role": "head", "shape": [49152, 576], "tied_to": "model.embed_tokens"}}}
        else:  # fp16 table (the size the issue quotes); fp32 in onebit's runs
            specs["model.embed_tokens.weight"] = ((49152, 576), torch.float16)
        led = ledger_from_specs(specs, qc["modules"], embed)
        assert led.original_weights == n_params, (led.original_weights, n_params)
        print(f"{name:16s} embed {kind if kind != 'none' else 'fp16':5s} linears {led.bits_per_linear_weight:.4f}  "
              f"end to end {led.bits_per_weight:.4f} bits/weight  {led.total_bits / 8 / 2**20:7.2f} MiB  ({n_params:,d} weights)")
