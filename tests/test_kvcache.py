"""The quantized KV cache: its math, its storage (formula == tensor bytes), a chunked forward through
it (float cache == one forward; int8 close to it, int4 further but finite), any weight method, the
CLI flags reaching the code, bad settings refused in one line."""
import copy
import math

import pytest
import torch

from onebit.errors import OneBitError
from onebit.eval.perplexity import perplexity
from onebit.kvcache import (KV_AXES, KV_KINDS, KVQuantConfig, QuantizedKVCache, cache_kwarg,
                            dequantize_groups, kv_cache_bits, pack_int4, quantize_groups, unpack_int4)


@pytest.mark.parametrize("bits", [8, 4])
def test_group_round_trip_error_is_at_most_half_a_step(bits):
    x = torch.randn(3, 4, 5, 64) * torch.linspace(0.1, 10, 64)
    codes, scale, lo = quantize_groups(x, bits, 16)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2 ** bits - 1
    assert scale.shape == lo.shape == (3, 4, 5, 4) and scale.dtype == torch.float16
    xh = dequantize_groups(codes, scale, lo, 16, torch.float32)
    step = scale.float().repeat_interleave(16, -1)
    assert ((xh - x).abs() <= step / 2 + 1e-3 * x.abs().amax()).all()


def test_int4_pack_unpack_inverse():
    c = torch.randint(0, 16, (2, 3, 8), dtype=torch.uint8)
    p = pack_int4(c)
    assert p.shape == (2, 3, 4) and torch.equal(unpack_int4(p), c)


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("axis", KV_AXES)
def test_storage_bytes_equal_the_formula_and_reads_return_every_token(kind, axis):
    cfg = KVQuantConfig(kind, axis, 16)
    cache = QuantizedKVCache(cfg)
    layers, heads, dim, steps = 3, 2, 32, [5, 1, 1, 20, 3, 9]
    for n in steps:
        for li in range(layers):
            k, v = torch.randn(1, heads, n, dim).half(), torch.randn(1, heads, n, dim).half()
            K, V = cache.update(k, v, li)
            assert torch.equal(K[..., -n:, :], k) and K.shape[-2] == cache.layers[li].get_seq_length()
    T = sum(steps)
    assert cache.get_seq_length() == T
    assert cache.storage_bytes() * 8 == kv_cache_bits(layers, heads, dim, T, cfg.bits, 16, axis)
    fp16 = kv_cache_bits(layers, heads, dim, T) / 8
    assert cache.storage_bytes() < fp16
    if axis == "token":      # codes + 2 fp16 per group of 16
        assert cache.storage_bytes() == fp16 * (cfg.bits + 2) / 16


def test_past_tokens_come_back_quantized():
    cache = QuantizedKVCache(KVQuantConfig("int8", "token", 32))
    k = torch.randn(1, 2, 7, 32)
    cache.update(k, k, 0)
    K, _ = cache.update(torch.zeros(1, 2, 1, 32), torch.zeros(1, 2, 1, 32), 0)
    err = (K[..., :7, :] - k).abs()
    assert 0 < float(err.max()) < float(k.abs().max()) / 100


def test_smollm2_memory_formula():
    """30 layers x 3 KV heads x 64 dims: fp16 45 MiB at 2k tokens, int8 per token (groups of 32)
    0.53x that, int4 0.28x."""
    fp = kv_cache_bits(30, 3, 64, 2048) / 8
    assert fp == 30 * 2 * 3 * 64 * 2048 * 2
    assert kv_cache_bits(30, 3, 64, 2048, 8, 32) / 8 / fp == pytest.approx((8 + 1) / 16)
    assert kv_cache_bits(30, 3, 64, 2048, 4, 32) / 8 / fp == pytest.approx((4 + 1) / 16)


def _ids(n=300):
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, 512, (n,), generator=g)


def _window_logits(model, ids, chunk=None, kv=None):
    from onebit.eval.perplexity import _chunked

    with torch.no_grad():
        return (model(ids) if chunk is None else _chunked(model, ids, chunk, kv)).logits


def test_chunked_float_cache_equals_one_forward(fp_260k):
    ids = _ids(96)[None]
    ref = _window_logits(fp_260k, ids)
    assert torch.allclose(_window_logits(fp_260k, ids, 16), ref, rtol=1e-4, atol=1e-4)
    assert math.isclose(perplexity(fp_260k, _ids(), 96, 2, progress=False).ppl,
                        perplexity(fp_260k, _ids(), 96, 2, progress=False, kv_chunk=8).ppl, rel_tol=1e-5)


@pytest.mark.parametrize("axis", ["token", "kivi"])
def test_int8_close_to_float_int4_worse_but_finite(fp_260k, axis):
    ids = _ids(96)[None]
    ref = _window_logits(fp_260k, ids)
    e8 = (_window_logits(fp_260k, ids, 4, KVQuantConfig("int8", axis, 32)) - ref).abs()
    l4 = _window_logits(fp_260k, ids, 4, KVQuantConfig("int4", axis, 32))
    e4 = (l4 - ref).abs()
    assert torch.isfinite(l4).all()
    assert float(e8.max()) < 0.05 * float(ref.abs().max())
    assert float(e4.mean()) > 2 * float(e8.mean()) > 0


def test_works_with_a_weight_method(fp_260k):
    import onebit
    from onebit.methods.rtn import RTNConfig

    q = onebit.quantize(copy.deepcopy(fp_260k), RTNConfig(bits=4, group_size=32), progress=False)
    base = perplexity(q, _ids(), 96, 2, progress=False).ppl
    got = perplexity(q, _ids(), 96, 2, progress=False, kv_cache=KVQuantConfig("int8"), kv_chunk=8).ppl
    assert math.isfinite(got) and abs(got / base - 1) < 0.02


def test_generate_with_quantized_cache(fp_260k, tok_260k):
    from onebit.generate import generate_text

    fp = generate_text(fp_260k, tok_260k, "Once upon a time", 12, temperature=0)
    q8 = generate_text(fp_260k, tok_260k, "Once upon a time", 12, temperature=0, kv_cache=KVQuantConfig("int8"))
    assert q8.startswith("Once upon a time") and len(q8) > len("Once upon a time")
    assert fp.split()[:6] == q8.split()[:6]


@pytest.mark.parametrize("kw,msg", [({"kind": "int3"}, "--kv-cache must be one of none, int8, int4"),
                                    ({"axis": "head"}, "--kv-axis must be one of token, channel, kivi"),
                                    ({"group": 0}, r"--kv-group must be an integer in \[1, 4096\]"),
                                    ({"kind": "int4", "axis": "channel", "group": 3}, "even")])
def test_bad_settings_one_line(kw, msg):
    with pytest.raises(OneBitError, match=msg) as e:
        KVQuantConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_ppl_needs_a_chunk_for_a_quantized_cache(fp_260k):
    with pytest.raises(OneBitError, match="--kv-chunk"):
        perplexity(fp_260k, _ids(), 96, 1, progress=False, kv_cache=KVQuantConfig("int8"))
    with pytest.raises(OneBitError, match="at least 1"):
        perplexity(fp_260k, _ids(), 96, 1, progress=False, kv_chunk=0)


def test_cli_choices_mirror_the_module():
    from onebit.cli import kvflags

    assert kvflags.KV_KINDS == KV_KINDS and kvflags.KV_AXES == KV_AXES


def test_cli_flags_reach_the_code(stories260k, monkeypatch, capsys):
    import onebit.eval.perplexity as P
    import onebit.generate as G
    from onebit.cli.main import main

    seen = {}

    def fake_ppl(model, tok, data, seqlen, max_windows=None, batch_size=1, progress=True, **kw):
        seen["ppl"] = kw
        return P.PerplexityResult(1.0, 0.0, 1, seqlen, seqlen, 0.0)

    monkeypatch.setattr(P, "dataset_perplexity", fake_ppl)
    monkeypatch.setattr(G, "generate_text", lambda *a, **kw: seen.setdefault("gen", kw) and "x")
    assert main(["eval", "ppl", stories260k, "--data", "tinystories", "--kv-cache", "int4", "--kv-axis",
                 "kivi", "--kv-group", "16", "--kv-chunk", "4"]) == 0
    assert seen["ppl"] == {"kv_cache": KVQuantConfig("int4", "kivi", 16), "kv_chunk": 4}
    assert main(["generate", stories260k, "--kv-cache", "int8", "--max-new-tokens", "2"]) == 0
    assert seen["gen"]["kv_cache"] == KVQuantConfig("int8", "token", 32)
    capsys.readouterr()
    for argv in (["eval", "ppl", stories260k, "--kv-cache", "int8"],
                 ["generate", stories260k, "--kv-cache", "int8", "--kv-group", "0"],
                 ["generate", stories260k, "--kv-group", "16"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("onebit: error: --kv") and "\n" not in err


def test_cache_kwarg_matches_the_installed_transformers(fp_260k):
    import inspect

    assert cache_kwarg(fp_260k) in inspect.signature(fp_260k.forward).parameters
