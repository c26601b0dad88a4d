"""Sign-Value-Independent Decomposition (OneBit, Xu et al. 2024, sec. 3.3).

``W ≈ sign(W) ⊙ (a bᵀ)`` where ``a bᵀ`` is a rank-1 approximation of ``|W|``.
Pure functions on tensors; no modules, no I/O.

Two ways to get the rank-1 factors of the non-negative matrix ``|W|``:

* ``svd``: the leading singular pair by power iteration.  ``|W|`` is
  non-negative, so by Perron-Frobenius the leading singular vectors can be
  taken non-negative; starting from a positive vector keeps every iterate
  non-negative.  Converges in a handful of matrix-vector products.
* ``nmf``: rank-1 non-negative matrix factorisation by Lee & Seung's
  multiplicative updates for the Frobenius loss (the paper uses NMF; this
  is the torch version of it, no scikit-learn).  Factors are non-negative by
  construction.  For rank 1 the Frobenius optimum coincides with the leading
  singular pair, so the two differ only by convergence and cost.

Both return ``(a, b)`` with ``a`` of length ``out_features`` and ``b`` of
length ``in_features``; the OneBit layer then uses ``h = a`` and ``g = b``.
The norm is split evenly (``‖a‖ = ‖b‖``) so neither vector over/underflows
in fp16.
"""
from __future__ import annotations

import torch

INIT_METHODS = ("svd", "nmf")


def _balance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return torch.zeros_like(a), torch.zeros_like(b)
    s = torch.sqrt(na * nb)
    return a / na * s, b / nb * s


@torch.no_grad()
def rank1_svd(m: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading singular pair of ``m`` by power iteration: ``m ≈ a bᵀ``.

    For a non-negative ``m`` the returned factors are non-negative.
    """
    m = m.float()
    v = torch.full((m.shape[1],), 1.0 / m.shape[1] ** 0.5, device=m.device)
    sigma = torch.zeros((), device=m.device)
    u = torch.zeros(m.shape[0], device=m.device)
    for _ in range(iters):
        u = m @ v
        un = u.norm()
        if un == 0:
            return torch.zeros(m.shape[0], device=m.device), torch.zeros(m.shape[1], device=m.device)
        u = u / un
        v_new = m.T @ u
        new_sigma = v_new.norm()
        v = v_new / new_sigma
        done = (new_sigma - sigma).abs() <= tol * new_sigma
        sigma = new_sigma
        if done:
            break
    return _balance(u * sigma, v)


@torch.no_grad()
def rank1_nmf(m: torch.Tensor, iters: int = 200, tol: float = 1e-6, seed: int = 0,
              eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 NMF of a non-negative ``m`` by multiplicative updates (Frobenius loss)."""
    m = m.float()
    if (m < 0).any():
        raise ValueError("rank1_nmf needs a non-negative matrix")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    scale = (m.mean() / max(m.shape[0], 1)).clamp_min(eps).sqrt()
    a = (torch.rand(m.shape[0], generator=gen) * scale + eps).to(m.device)
    b = (torch.rand(m.shape[1], generator=gen) * scale + eps).to(m.device)
    prev = None
    for i in range(iters):
        # a <- a * (M b) / (a bᵀb);  b <- b * (Mᵀ a) / (b aᵀa)
        a = a * (m @ b) / (a * (b @ b) + eps)
        b = b * (m.T @ a) / (b * (a @ a) + eps)
        if i % 10 == 9:
            # ‖M - abᵀ‖² = ‖M‖² - 2 aᵀMb + ‖a‖²‖b‖²; track the part that changes
            obj = (a @ a) * (b @ b) - 2 * (a @ (m @ b))
            if prev is not None and (prev - obj).abs() <= tol * obj.abs().clamp_min(eps):
                break
            prev = obj
    return _balance(a, b)


def svid(w: torch.Tensor, method: str = "svd", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 factors ``(a, b)`` of ``|W|`` so that ``W ≈ sign(W) ⊙ (a bᵀ)``."""
    if method == "svd":
        return rank1_svd(w.abs(), **kwargs)
    if method == "nmf":
        return rank1_nmf(w.abs(), **kwargs)
    raise ValueError(f"unknown SVID init '{method}'; choose one of {', '.join(INIT_METHODS)}")


def reconstruct(w_sign: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sign(W) ⊙ (a bᵀ)``: the dense weight the factors stand for."""
    return w_sign * torch.outer(a, b)


def svid_shared_input(ws: list[torch.Tensor], method: str = "svd",
                      **kwargs) -> tuple[list[torch.Tensor], torch.Tensor]:
    """SVID of sibling layers that read the same input (q/k/v, gate/up) with one shared ``b``.

    The rank-1 fit of the row-stacked ``|[W_1; W_2; ...]|`` gives one ``a`` per
    stacked row and one ``b`` per input column: ``W_i ≈ sign(W_i) ⊙ (a_i bᵀ)``
    with the same ``b`` for every sibling.  Returns ``([a_1, a_2, ...], b)``.
    """
    a, b = svid(torch.cat([w.float() for w in ws], dim=0), method, **kwargs)
    return list(torch.split(a, [w.shape[0] for w in ws])), b
