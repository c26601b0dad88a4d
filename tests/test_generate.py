"""onebit's decode loop (static KV cache) against transformers' generate, on stories260K."""
import pytest
import torch

import onebit
from onebit.errors import OneBitError
from onebit.generate import StaticDecoder, generate_text

PROMPT = "Once upon a time there was"


@pytest.fixture(scope="module")
def packed_260k(fp_260k):
    import copy

    m = copy.deepcopy(fp_260k)           # 260K parameters: a copy is cheap here
    onebit.quantize(m, onebit.OneBitConfig(), progress=False)
    return m.eval()


def hf_greedy(model, ids, n):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          pad_token_id=0)


@pytest.mark.parametrize("engine", ["onebit", "hf"])
@pytest.mark.parametrize("which", ["fp", "packed"])
def test_static_greedy_equals_hf_generate(which, engine, fp_260k, packed_260k, tok_260k):
    model = fp_260k if which == "fp" else packed_260k
    ids = tok_260k(PROMPT, return_tensors="pt").input_ids
    n = 24
    ref = hf_greedy(model, ids, n)
    dec = StaticDecoder(model, ids.shape[1] + n, engine=engine)
    assert dec.engine == engine and StaticDecoder(model, 8).engine == "onebit"   # auto: Llama -> onebit
    got = dec.generate(ids, n)
    assert got.shape == ref.shape
    assert torch.equal(got, ref)
    # the decoder is reusable: a second prompt gives the same as a fresh decoder
    ids2 = tok_260k("The dog", return_tensors="pt").input_ids
    assert torch.equal(dec.generate(ids2, 8), hf_greedy(model, ids2, 8))


@pytest.mark.parametrize("engine", ["onebit", "hf"])
def test_static_step_logits_match_a_full_forward(engine, packed_260k, tok_260k):
    ids = tok_260k(PROMPT, return_tensors="pt").input_ids
    dec = StaticDecoder(packed_260k, ids.shape[1] + 4, engine=engine)
    dec.prefill(ids[:, :-2])
    dec.step(ids[:, -2:-1])
    last = dec.step(ids[:, -1:])
    with torch.no_grad():
        full = packed_260k(ids).logits[:, -1]
    assert torch.allclose(last, full, rtol=1e-4, atol=1e-4)
    if engine == "onebit":   # a chunk of several tokens after earlier ones (the masked path)
        dec.prefill(ids[:, :3])
        with torch.inference_mode():
            chunk = dec.rt.forward(ids[:, 3:])
        assert torch.allclose(chunk, full, rtol=1e-4, atol=1e-4)


def test_engine_choice(fp_260k):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert StaticDecoder(gpt2, 8).engine == "hf"
    ids = torch.tensor([[5, 9, 17, 3, 40]])      # a non-Llama model through transformers' StaticCache
    assert torch.equal(StaticDecoder(gpt2.eval(), 12).generate(ids, 6), hf_greedy(gpt2, ids, 6))
    assert StaticDecoder(fp_260k, 8, compile=True).engine == "hf"
    with pytest.raises(OneBitError, match="Llama"):
        StaticDecoder(gpt2, 8, engine="onebit")


def test_static_cache_overflow_is_an_error(fp_260k, tok_260k):
    ids = tok_260k(PROMPT, return_tensors="pt").input_ids
    dec = StaticDecoder(fp_260k, ids.shape[1] + 1)
    dec.prefill(ids)
    dec.step(ids[:, -1:])
    with pytest.raises(OneBitError, match="static cache"):
        dec.step(ids[:, -1:])


def test_generate_text_runtimes_agree_greedy(fp_260k, tok_260k):
    a = generate_text(fp_260k, tok_260k, PROMPT, 16, temperature=0, runtime="static")
    b = generate_text(fp_260k, tok_260k, PROMPT, 16, temperature=0, runtime="hf")
    assert a == b and len(a) > len(PROMPT)
    s1 = generate_text(fp_260k, tok_260k, PROMPT, 16, temperature=0.8, seed=3)
    s2 = generate_text(fp_260k, tok_260k, PROMPT, 16, temperature=0.8, seed=3)
    assert s1 == s2
    with pytest.raises(OneBitError, match="runtime"):
        generate_text(fp_260k, tok_260k, PROMPT, 4, runtime="jit")


def test_cli_runtime_flags(stories260k, capsys):
    from onebit.cli.main import main

    outs = []
    for rt in ("static", "hf"):
        assert main(["generate", stories260k, "--prompt", "Once upon", "--max-new-tokens", "8",
                     "--temperature", "0", "--runtime", rt]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].startswith("Once upon")
    with pytest.raises(SystemExit) as e:       # argparse's choices
        main(["generate", stories260k, "--runtime", "jit"])
    assert e.value.code == 2


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_head_round_trip_decodes_the_same(kind, tmp_path):
    """OneBit linears + an untied int8/int4 head (the TinyLlama case): saved, loaded back by onebit.load
    and from_pretrained, the static decoder gives the in-memory model's greedy tokens and logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from onebit.embeddings import EmbedQuantConfig
    from onebit.integrations.hf import from_pretrained

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=300,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = onebit.quantize(LlamaForCausalLM(cfg).eval(), onebit.OneBitConfig(), progress=False,
                        embed=EmbedQuantConfig(kind, group_size=32, head=True))
    assert type(m.lm_head).__name__ == "QuantLMHead" and not m.lm_head.tied
    onebit.save(m, tmp_path / "c")
    ids = torch.randint(0, 300, (1, 7), generator=torch.Generator().manual_seed(1))
    ref = hf_greedy(m, ids, 10)
    for back in (onebit.load(str(tmp_path / "c")), from_pretrained(tmp_path / "c")):
        assert type(back.lm_head).__name__ == "QuantLMHead"
        with torch.no_grad():
            assert torch.equal(back(ids).logits, m(ids).logits)
        assert torch.equal(StaticDecoder(back, 17).generate(ids, 10), ref)
