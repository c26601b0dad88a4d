"""Richer 1-bit scales: rank-k SVID and the mixture of scales.  Pure functions on tensors.

**Rank-k scales.**  OneBit writes ``W ≈ sign(W) ⊙ (h gᵀ)``; the rank-k form is
``W ≈ sign(W) ⊙ (H Gᵀ)`` with ``H`` of ``out × k`` and ``G`` of ``in × k``.  Because
``sign(W) ⊙ sign(W) = 1`` elementwise, ``‖W − sign(W) ⊙ (H Gᵀ)‖_F = ‖|W| − H Gᵀ‖_F``, so the best
``H Gᵀ`` is the best rank-k approximation of ``|W|`` (SVID generalised):

* ``svd``: greedy deflation, each component the leading singular pair of what the previous ones
  left (:func:`onebit.methods.svid.rank1_svd`); with converged pairs this is the truncated SVD
  (Eckart–Young), and every component lowers the error by its singular value squared.  The first
  component is exactly OneBit's SVID.
* ``nmf``: rank-k non-negative factorisation by multiplicative updates; for k = 1 exactly
  :func:`onebit.methods.svid.rank1_nmf`.

The product never materialises the ``out × in`` matrix:
``y = Σ_r h_r ⊙ (sign(W) (g_r ⊙ x))`` — one product with the sign matrix on ``x`` expanded to
``k`` copies (:func:`rank_scaled_product`).

**Mixture of scales** (BinaryMoS, Jo et al. 2024, arXiv 2406.12311).  ``k`` scale experts
``G_e`` (``k × in``) and ``H_e`` (``k × out``) and a router ``W_r`` (``in × k``): per token,
``p = softmax(x W_r)``, ``g = p G_e``, ``h = p H_e``, then OneBit's ``h ⊙ (sign(W)(g ⊙ x))``.
Initialised with every expert at the SVID ``g``/``h`` times ``1 + σ ε`` (``ε`` zero-mean across
the experts, so the uniform mixture of the zero router is exactly the SVID at the start) and
``W_r = 0``.

Bits per layer (``s`` = bits of a stored scale, 16 for fp16; rows of signs padded to bytes):
``out·⌈in/8⌉·8 + s·k·(in + out)`` for rank-k, ``+ s·k·in`` more for the mixture's router.
"""
from __future__ import annotations

import torch

from .svid import INIT_METHODS, rank1_nmf, rank1_svd, svid


def _balance_columns(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each component's norm evenly between ``a[:, r]`` and ``b[:, r]`` (fp16-safe)."""
    na, nb = a.norm(dim=0), b.norm(dim=0)
    ok = (na > 0) & (nb > 0)
    s = torch.sqrt(na * nb)
    fa = torch.where(ok, s / torch.where(ok, na, torch.ones_like(na)), torch.zeros_like(na))
    fb = torch.where(ok, s / torch.where(ok, nb, torch.ones_like(nb)), torch.zeros_like(nb))
    return a * fa, b * fb


@torch.no_grad()
def rank_k_svd(m: torch.Tensor, k: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [rows, k], B [cols, k])`` with ``m ≈ A Bᵀ`` by greedy deflation of leading singular pairs."""
    m = m.float()
    a_cols, b_cols = [], []
    resid = m.clone()
    for _ in range(k):
        a, b = rank1_svd(resid, **kwargs)
        a_cols.append(a)
        b_cols.append(b)
        resid -= torch.outer(a, b)
    return torch.stack(a_cols, 1), torch.stack(b_cols, 1)


@torch.no_grad()
def rank_k_nmf(m: torch.Tensor, k: int, iters: int = 300, tol: float = 1e-6, seed: int = 0,
               eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-k NMF of a non-negative ``m`` (Lee & Seung, Frobenius loss): ``m ≈ A Bᵀ``, ``A, B ≥ 0``."""
    m = m.float()
    if (m < 0).any():
        raise ValueError("rank_k_nmf needs a non-negative matrix")
    if k == 1:
        a, b = rank1_nmf(m, seed=seed, eps=eps)
        return a[:, None], b[:, None]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = (m.mean() / k).clamp_min(eps).sqrt()
    a = (torch.rand(m.shape[0], k, generator=gen) * scale + eps).to(m.device)
    b = (torch.rand(m.shape[1], k, generator=gen) * scale + eps).to(m.device)
    prev = None
    for i in range(iters):
        a = a * (m @ b) / (a @ (b.T @ b) + eps)
        b = b * (m.T @ a) / (b @ (a.T @ a) + eps)
        if i % 10 == 9:
            # ‖M − ABᵀ‖² − ‖M‖² = ‖ABᵀ‖² − 2 tr(Aᵀ M B)
            obj = ((a.T @ a) * (b.T @ b)).sum() - 2 * (a * (m @ b)).sum()
            if prev is not None and (prev - obj).abs() <= tol * obj.abs().clamp_min(eps):
                break
            prev = obj
    return a, b


def svid_rank(w: torch.Tensor, k: int, method: str = "svd", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-k SVID: ``(H [out, k], G [in, k])`` with ``W ≈ sign(W) ⊙ (H Gᵀ)``; column norms balanced.

    ``k = 1`` is exactly :func:`onebit.methods.svid.svid` (OneBit's ``h``, ``g``).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"rank must be an integer >= 1, got {k!r}")
    if method not in INIT_METHODS:
        raise ValueError(f"unknown SVID init '{method}'; choose one of {', '.join(INIT_METHODS)}")
    if k == 1:
        a, b = svid(w, method, **kwargs)
        return a[:, None], b[:, None]
    if method == "svd":
        a, b = rank_k_svd(w.abs(), k, **kwargs)
    else:
        a, b = rank_k_nmf(w.abs(), k, **kwargs)
    return _balance_columns(a, b)


def rank_reconstruct(w_sign: torch.Tensor, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sign(W) ⊙ (H Gᵀ)`` for ``h [k, out]`` and ``g [k, in]`` (rows = components, as stored)."""
    return w_sign * (h.T @ g)


def rank_scaled_product(x: torch.Tensor, g: torch.Tensor, h: torch.Tensor, sign_product) -> torch.Tensor:
    """``Σ_r h_r ⊙ sign_product(g_r ⊙ x)`` with ``g [k, in]``, ``h [k, out]``, ``x [..., in]``.

    ``sign_product`` applies the sign matrix to ``[k, ..., in]`` (one product for all k components:
    x expanded to k copies); the ``out × in`` matrix ``sign(W) ⊙ (H Gᵀ)`` is never built.
    """
    k = g.shape[0]
    lead = (1,) * (x.dim() - 1)
    xs = x.unsqueeze(0) * g.to(x.dtype).reshape(k, *lead, g.shape[1])
    y = sign_product(xs)
    return (y * h.to(y.dtype).reshape(k, *lead, h.shape[1])).sum(0)


# ----------------------------------------------------------------------------- mixture of scales
@torch.no_grad()
def mos_init_experts(h: torch.Tensor, g: torch.Tensor, k: int, noise: float = 0.0,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_e [k, out], G_e [k, in])``: every expert = the SVID ``h``/``g`` times ``1 + noise·ε``.

    ``ε`` is standard normal made zero-mean across the ``k`` experts (for ``k > 1``), so the
    uniform mixture (a zero router) equals ``h``/``g`` exactly; ``k = 1`` has no noise.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"experts must be an integer >= 1, got {k!r}")
    he = h.float().unsqueeze(0).repeat(k, 1)
    ge = g.float().unsqueeze(0).repeat(k, 1)
    if k > 1 and noise > 0:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for e in (he, ge):
            eps = torch.randn(e.shape, generator=gen).to(e.device)
            e.mul_(1 + noise * (eps - eps.mean(0, keepdim=True)))
    return he, ge


def mos_gates(x: torch.Tensor, router: torch.Tensor) -> torch.Tensor:
    """The router's mixing weights per token: ``softmax(x W_r)`` over the ``k`` experts."""
    return torch.softmax(x @ router.to(x.dtype), dim=-1)


def mos_scales(x: torch.Tensor, router: torch.Tensor, g: torch.Tensor,
               h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``(g [..., in], h [..., out])``: the router-weighted mixtures of the experts."""
    p = mos_gates(x, router)
    return p @ g.to(x.dtype), p @ h.to(x.dtype)


# ----------------------------------------------------------------------------- bits
def sign_bits(out_features: int, in_features: int) -> int:
    """Packed sign bits of a layer (rows padded to whole bytes)."""
    return out_features * ((in_features + 7) // 8) * 8


def rank_layer_bits(out_features: int, in_features: int, k: int, scale_bits: int = 16) -> int:
    """Bits of one rank-k layer: packed signs + ``G`` (k × in) + ``H`` (k × out)."""
    return sign_bits(out_features, in_features) + scale_bits * k * (in_features + out_features)


def mos_layer_bits(out_features: int, in_features: int, k: int, scale_bits: int = 16) -> int:
    """Bits of one mixture-of-scales layer: packed signs + experts (k × (in + out)) + router (in × k)."""
    return rank_layer_bits(out_features, in_features, k, scale_bits) + scale_bits * in_features * k
