"""Math of the richer 1-bit scales (onebit.methods.multiscale): rank-k SVID, mixture of scales, bits."""
import pytest
import torch

from onebit.methods.multiscale import (mos_init_experts, mos_layer_bits, mos_scales, rank_k_nmf, rank_layer_bits,
                                       rank_reconstruct, rank_scaled_product, svid_rank)
from onebit.methods.svid import svid


@pytest.fixture(scope="module")
def w(fp_260k):
    return fp_260k.model.layers[1].mlp.down_proj.weight.detach().float()   # a real [64, 172] weight


@pytest.mark.parametrize("method", ["svd", "nmf"])
def test_rank1_is_exactly_svid(w, method):
    h, g = svid_rank(w, 1, method)
    a, b = svid(w, method)
    assert h.shape == (64, 1) and g.shape == (172, 1)
    assert torch.equal(h[:, 0], a) and torch.equal(g[:, 0], b)


def _err(w, h, g):
    return float((w - rank_reconstruct(torch.where(w >= 0, 1.0, -1.0), h.T, g.T)).norm() / w.norm())


def test_rank_k_svd_reaches_the_eckart_young_error(w):
    """‖W − sign(W) ⊙ HGᵀ‖ = ‖|W| − HGᵀ‖, minimised by the truncated SVD of |W|."""
    s = torch.linalg.svdvals(w.abs().double())
    prev = 2.0
    for k in (1, 2, 3, 5):
        h, g = svid_rank(w, k, "svd")
        best = float(s[k:].pow(2).sum().sqrt() / w.double().norm())
        e = _err(w, h, g)
        assert e < prev and e == pytest.approx(best, rel=2e-3), (k, e, best)
        prev = e
        n = h.norm(dim=0) / g.norm(dim=0)                         # norms split evenly per component
        assert torch.allclose(n, torch.ones_like(n), atol=1e-4)


def test_rank_k_nmf_is_non_negative_and_improves_with_k(w):
    errs = []
    for k in (1, 2, 4):
        h, g = svid_rank(w, k, "nmf")
        assert (h >= 0).all() and (g >= 0).all()
        errs.append(_err(w, h, g))
    assert errs[0] > errs[1] > errs[2]
    with pytest.raises(ValueError, match="non-negative"):
        rank_k_nmf(-w.abs(), 2)


def test_rank_scaled_product_equals_the_dense_product(w):
    h, g = svid_rank(w, 3)
    x = torch.randn(2, 5, 172, dtype=torch.float64)
    s = torch.where(w >= 0, 1.0, -1.0).double()
    dense = rank_reconstruct(s, h.T.double(), g.T.double())
    y = rank_scaled_product(x, g.T.double(), h.T.double(), lambda xs: xs @ s.T)
    torch.testing.assert_close(y, x @ dense.T)


def test_mos_init_uniform_mixture_is_the_svid():
    a, b = torch.rand(6) + 0.1, torch.rand(9) + 0.1
    he, ge = mos_init_experts(a, b, 4, noise=0.05, seed=3)
    assert he.shape == (4, 6) and ge.shape == (4, 9)
    assert (he.std(0) > 0).all() and (ge.std(0) > 0).all()               # experts differ
    torch.testing.assert_close(he.mean(0), a, rtol=1e-6, atol=0)          # zero-mean noise
    torch.testing.assert_close(ge.mean(0), b, rtol=1e-6, atol=0)
    x = torch.randn(3, 9)
    g, h = mos_scales(x, torch.zeros(9, 4), ge, he)                       # zero router: uniform mixture
    torch.testing.assert_close(g, b.expand(3, 9), rtol=1e-6, atol=0)
    torch.testing.assert_close(h, a.expand(3, 6), rtol=1e-6, atol=0)
    h1, g1 = mos_init_experts(a, b, 1, noise=0.05)                        # k = 1: no noise
    assert torch.equal(h1[0], a) and torch.equal(g1[0], b)
    he2, _ = mos_init_experts(a, b, 4, noise=0.05, seed=3)
    assert torch.equal(he, he2)                                           # seeded


def test_mos_scales_are_token_adaptive():
    ge, he = torch.rand(3, 8), torch.rand(3, 5)
    r = torch.randn(8, 3)
    x = torch.randn(4, 8)
    g, h = mos_scales(x, r, ge, he)
    p = torch.softmax(x @ r, -1)
    torch.testing.assert_close(g, p @ ge)
    torch.testing.assert_close(h, p @ he)
    assert not torch.allclose(g[0], g[1])


def test_bits_formulas():
    assert rank_layer_bits(4096, 4096, 1) == 4096 * 512 * 8 + 2 * 4096 * 16    # OneBit's layer
    assert rank_layer_bits(64, 172, 2) == 64 * 22 * 8 + 16 * 2 * (172 + 64)
    assert mos_layer_bits(64, 172, 4) == 64 * 22 * 8 + 16 * 4 * (172 + 64) + 16 * 172 * 4


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_counts(w, k):
    with pytest.raises(ValueError, match=">= 1"):
        svid_rank(w, k)
    with pytest.raises(ValueError, match=">= 1"):
        mos_init_experts(w[:, 0], w[0], k)
