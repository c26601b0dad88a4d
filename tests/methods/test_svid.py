import pytest
import torch
from safetensors.torch import load_file

from onebit.methods.svid import rank1_nmf, rank1_svd, reconstruct, svid
from onebit.formats.packing import sign


def _real_weights(path):
    sd = load_file(f"{path}/model.safetensors")
    return {k: v for k, v in sd.items() if v.dim() == 2 and "proj" in k}


@pytest.mark.parametrize("init", ["svd", "nmf"])
def test_proposition_2_on_real_weights(stories3m, init):
    ws = _real_weights(stories3m)
    assert len(ws) == 42
    for name, w in list(ws.items())[:14]:
        a, b = svid(w, init)
        err_svid = (w - reconstruct(sign(w), a, b)).norm()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        err_rank1 = (w - s[0] * torch.outer(u[:, 0], vh[0])).norm()
        assert err_svid <= err_rank1 * (1 + 1e-5), name
        assert (a >= 0).all() and (b >= 0).all(), name


def test_power_iteration_matches_linalg_svd(stories3m):
    w = next(iter(_real_weights(stories3m).values())).abs()
    a, b = rank1_svd(w)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = s[0] * torch.outer(u[:, 0], vh[0])
    assert torch.allclose(torch.outer(a, b), best, rtol=1e-3, atol=1e-6)


def test_nmf_nonnegative_and_close_to_optimum():
    m = torch.rand(40, 30) + 0.1
    a, b = rank1_nmf(m)
    assert (a >= 0).all() and (b >= 0).all()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    opt = (m - s[0] * torch.outer(u[:, 0], vh[0])).norm()
    assert (m - torch.outer(a, b)).norm() <= opt * 1.001


def test_nmf_rejects_negative():
    with pytest.raises(ValueError):
        rank1_nmf(torch.randn(4, 4))


def test_zero_matrix():
    a, b = rank1_svd(torch.zeros(3, 4))
    assert a.abs().sum() == 0 and b.abs().sum() == 0


def test_exact_rank1_magnitudes_recovered():
    a0, b0 = torch.rand(20) + 0.5, torch.rand(10) + 0.5
    w = torch.outer(a0, b0) * torch.where(torch.rand(20, 10) > 0.5, 1.0, -1.0)
    for init in ("svd", "nmf"):
        a, b = svid(w, init)
        assert torch.allclose(reconstruct(sign(w), a, b), w, atol=1e-4)
