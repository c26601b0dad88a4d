"""Every supported architecture, as a tiny random-weight model built from its config class:
quantize -> save -> from_pretrained / onebit.load -> same logits; save_pretrained round trip;
generation runs.  GPT-2's Conv1D (weight stored [in, out]) is quantized as a transposed linear."""
import pytest
import torch
from transformers import (AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig,
                          OPTConfig, Phi3Config, Qwen2Config)

import onebit
from onebit.formats.packing import unpack_signs
from onebit.nn.onebit_linear import OneBitLinear

V = 128
_COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)
CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=8),
    "phi3": lambda: Phi3Config(**_COMMON),
    "opt": lambda: OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "gpt2": lambda: GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                               bos_token_id=1, eos_token_id=2),
}
# linears per block (lm_head skipped): q,k,v,o + gate,up,down; Phi-3 fuses qkv and gate_up;
# OPT: q,k,v,out + fc1,fc2; GPT-2: c_attn, c_proj + c_fc, c_proj
PER_LAYER = {"llama": 7, "mistral": 7, "qwen2": 7, "gemma": 7, "phi3": 4, "opt": 6, "gpt2": 4}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_quantize_save_from_pretrained(arch, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch]()).eval()
    x = torch.randint(3, V, (2, 16))
    with torch.no_grad():
        fp_logits = model(x).logits
    q = onebit.quantize(model, onebit.OneBitConfig(), progress=False)
    assert len(q.config.quantization_config["modules"]) == 2 * PER_LAYER[arch]
    onebit.save(q, tmp_path / "p")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    assert sum(isinstance(m, OneBitLinear) for m in loaded.modules()) == 2 * PER_LAYER[arch]
    with torch.no_grad():
        ref = q(x).logits
        assert not torch.allclose(ref, fp_logits)  # it really is quantized
        assert torch.equal(ref, loaded(x).logits)
        assert torch.equal(ref, onebit.load(tmp_path / "p")(x).logits)
    loaded.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(ref, AutoModelForCausalLM.from_pretrained(tmp_path / "again")(x).logits)
    out = loaded.generate(x[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


def test_gpt2_conv1d_is_transposed_linear():
    """Conv1D stores W as [in, out]: the packed signs must be sign(W.T) and the layer ≈ W x."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS["gpt2"]()).eval()
    conv = model.transformer.h[0].mlp.c_fc
    assert isinstance(conv, Conv1D) and conv.weight.shape == (32, 128)
    w = conv.weight.detach().clone()
    lin = onebit.api.as_linear(conv)
    assert (lin.in_features, lin.out_features) == (32, 128) and torch.equal(lin.weight, w.T)
    onebit.quantize(model, onebit.OneBitConfig(), progress=False)
    packed = model.transformer.h[0].mlp.c_fc
    assert isinstance(packed, OneBitLinear) and (packed.in_features, packed.out_features) == (32, 128)
    assert torch.equal(unpack_signs(packed.weight_packed, 32), torch.where(w.T >= 0, 1.0, -1.0))
    xin = torch.randn(5, 32)
    with torch.no_grad():
        exact = conv(xin)  # the original Conv1D, still intact
        err = (packed(xin) - exact).norm() / exact.norm()
    assert err < 0.9  # SVID alone: a rough but real approximation, far from a random layer
