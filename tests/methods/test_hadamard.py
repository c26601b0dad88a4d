"""Randomized Hadamard rotations (onebit.methods.hadamard): orthogonal, deterministic, the fast
transform equals the matrix, the fold formulas undo each other."""
from __future__ import annotations

import pytest
import torch

from onebit.errors import OneBitError
from onebit.methods import hadamard as hd


@pytest.mark.parametrize("n", [8, 32, 64, 192, 576, 2048])
def test_randomized_hadamard_is_orthogonal(n):
    q = hd.randomized_hadamard(n, seed=3)
    eye = torch.eye(n, dtype=torch.float64)
    assert q.shape == (n, n) and q.dtype == torch.float64
    assert torch.allclose(q @ q.T, eye, atol=1e-12) and torch.allclose(q.T @ q, eye, atol=1e-12)


def test_power_of_two_is_signed_hadamard_and_seeds_differ():
    q = hd.randomized_hadamard(64, seed=0)
    assert torch.allclose(q.abs(), torch.full((64, 64), 1 / 8, dtype=torch.float64))  # diag(±1) H/√n
    assert torch.equal(q, hd.randomized_hadamard(64, seed=0))
    assert not torch.equal(q, hd.randomized_hadamard(64, seed=1))
    m, p = hd.split_pow2(576)
    assert (m, p) == (9, 64)
    assert hd.split_pow2(192) == (3, 64) and hd.split_pow2(2048) == (1, 2048)


@pytest.mark.parametrize("n", [260, 67, 0])  # 260 = 65·4: odd factor over 64
def test_unsupported_sizes_are_one_line_errors(n):
    with pytest.raises(OneBitError, match="rotation") as e:
        hd.randomized_hadamard(n)
    assert "\n" not in str(e.value)


def test_hadamard_and_fwht():
    h = hd.hadamard(16)
    assert torch.equal(h @ h.T, 16 * torch.eye(16, dtype=torch.float64)) and torch.equal(h, h.T)
    x = torch.randn(3, 5, 128, dtype=torch.float64)
    y = hd.fwht(x)
    assert torch.allclose(y, x @ hd.hadamard(128) / 128 ** 0.5, atol=1e-12)
    assert torch.allclose(hd.fwht(y), x, atol=1e-12)                   # its own inverse
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-10)  # orthogonal
    with pytest.raises(OneBitError, match="power-of-two"):
        hd.fwht(torch.randn(4, 12))
    with pytest.raises(OneBitError, match="power-of-two"):
        hd.hadamard(12)


@pytest.mark.parametrize("n", [64, 192, 576])
def test_rotation_then_inverse_is_identity(n):
    q = hd.randomized_hadamard(n, seed=5)
    w = torch.randn(40, n)
    back = hd.rotate_input(hd.rotate_input(w, q), q.T)
    assert back.dtype == w.dtype and torch.allclose(back, w, atol=1e-5)
    back = hd.rotate_output(hd.rotate_output(torch.randn(n, 7), q), q.T)
    assert back.shape == (n, 7)


def test_fold_formulas_preserve_the_function():
    torch.manual_seed(0)
    n, d, heads = 192, 32, 6
    q = hd.randomized_hadamard(n, seed=1)
    x = torch.randn(10, n, dtype=torch.float64)
    w_read, w_write, b = torch.randn(24, n, dtype=torch.float64), torch.randn(n, 24, dtype=torch.float64), \
        torch.randn(n, dtype=torch.float64)
    xr = x @ q                                                         # the rotated stream
    assert torch.allclose(xr @ hd.rotate_input(w_read, q).T, x @ w_read.T, atol=1e-10)
    z = torch.randn(10, 24, dtype=torch.float64)
    assert torch.allclose(z @ hd.rotate_output(w_write, q).T + hd.rotate_bias(b, q), (z @ w_write.T + b) @ q,
                          atol=1e-10)
    g = torch.rand(n, dtype=torch.float64) + 0.5                        # a norm weight folded into a reader
    assert torch.allclose((x * g) @ w_read.T, x @ hd.fold_scale(w_read, g).T, atol=1e-10)
    # per head: v's heads rotated, o undoes it
    h = hd.randomized_hadamard(d, seed=2)
    wv, wo = torch.randn(heads * d, n, dtype=torch.float64), torch.randn(n, heads * d, dtype=torch.float64)
    v = x @ hd.rotate_head_outputs(wv, h).T
    assert torch.allclose(v.view(10, heads, d), (x @ wv.T).view(10, heads, d) @ h, atol=1e-10)
    assert torch.allclose(v @ hd.rotate_head_inputs(wo, h).T, x @ wv.T @ wo.T, atol=1e-9)
    bv = torch.randn(heads * d, dtype=torch.float64)
    assert torch.allclose(hd.rotate_head_outputs(bv, h).view(heads, d), bv.view(heads, d) @ h)
