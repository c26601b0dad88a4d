"""HiddenPad: the zero channels `onebit export --pad` adds keep every layer's output exact."""
import numpy as np

from onebit.export import weights as W
from onebit.export.padding import HiddenPad


def test_roles():
    assert HiddenPad.role("blk.3.attn_q.weight") == "cols"
    assert HiddenPad.role("token_embd.weight") == "cols"
    assert HiddenPad.role("output.weight") == "cols"
    assert HiddenPad.role("blk.0.ffn_down.weight") == "rows"
    assert HiddenPad.role("blk.0.attn_norm.weight") == "norm"
    assert HiddenPad.role("output_norm.weight") == "norm"
    assert HiddenPad.role("blk.0.attn_k.bias") == "cols"
    assert HiddenPad.role("rope_freqs.weight") is None


def test_no_padding_is_identity():
    pad = HiddenPad(64, 64)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert pad.dense("blk.0.attn_q.weight", a) is a
    c = W.Codes(np.ones((3, 4), np.int8), np.ones((3, 1), np.float32), 4, "sign")
    assert pad.codes("blk.0.ffn_down.weight", c) is c


def test_dense_padding_keeps_outputs_exact():
    rng = np.random.default_rng(0)
    d, p, n = 6, 8, 5
    pad = HiddenPad(d, p)
    x = rng.standard_normal(d).astype(np.float32)
    xp = np.concatenate([x, np.zeros(p - d, np.float32)])
    # a reader (cols): the same outputs from the padded input
    w = rng.standard_normal((n, d)).astype(np.float32)
    np.testing.assert_allclose(pad.dense("blk.0.attn_q.weight", w) @ xp, w @ x, rtol=1e-6)
    # a writer (rows): the same outputs, and exactly 0 on the new channels
    w2 = rng.standard_normal((d, n)).astype(np.float32)
    y = pad.dense("blk.0.ffn_down.weight", w2) @ x[:n]
    np.testing.assert_allclose(y[:d], w2 @ x[:n], rtol=1e-6)
    assert np.all(y[d:] == 0)
    # a writer's bias padded with zeros, a reader's bias untouched
    b = rng.standard_normal(d).astype(np.float32)
    assert np.array_equal(pad.dense("blk.0.attn_output.bias", b), np.concatenate([b, np.zeros(2, np.float32)]))
    bq = rng.standard_normal(n).astype(np.float32)
    assert pad.dense("blk.0.attn_q.bias", bq) is bq
    # RMSNorm: the padded norm of the padded input equals the original (eps scaled by d/p)
    g, eps = rng.standard_normal(d).astype(np.float32), 1e-5
    gp = pad.dense("blk.0.attn_norm.weight", g)
    ref = g * x / np.sqrt(np.mean(x ** 2) + eps)
    out = gp * xp / np.sqrt(np.mean(xp ** 2) + eps * d / p)
    np.testing.assert_allclose(out[:d], ref, rtol=1e-5)
    assert np.all(out[d:] == 0)


def test_codes_padding():
    d, p = 6, 8
    pad = HiddenPad(d, p)
    vals = np.where(np.random.default_rng(1).random((4, d)) > 0.5, 1, -1).astype(np.int8)
    c = W.Codes(vals, np.full((4, 1), 0.5, np.float32), d, "sign")
    r = pad.codes("blk.0.ffn_gate.weight", c)   # reads the hidden state: columns added, one block
    assert r.values.shape == (4, p) and r.block == p and r.scales.shape == (4, 1)
    assert np.array_equal(r.values[:, :d], vals)
    w = W.Codes(np.ones((d, 4), np.int8), np.full((d, 1), 2.0, np.float32), 4, "sign")
    r = pad.codes("blk.0.ffn_down.weight", w)    # writes it: rows added with a zero scale
    assert r.values.shape == (p, 4) and np.all(r.scales[d:] == 0) and np.all(r.scales[:d] == 2.0)
