"""Randomized Hadamard rotations and the formulas that fold them into weights (pure math).

A rotation ``Q`` (orthogonal, ``Q Qᵀ = I``) of a model's residual stream changes no function
(``onebit.rotation`` walks the model); it spreads each weight's outlier columns over many
coordinates, so a 1-bit sign or a per-row scale loses less (QuaRot, arXiv 2404.00456).

* :func:`hadamard` — Sylvester's ``±1`` Hadamard matrix of a power-of-two size;
* :func:`fwht` — the fast Walsh–Hadamard transform, ``x ↦ x H/√n`` in ``O(n log n)``;
* :func:`randomized_hadamard` — ``Q = diag(s) (R ⊗ H/√2ᵏ)`` for ``n = m·2ᵏ`` (``m`` odd):
  ``s`` random signs, ``R`` a random ``m×m`` orthogonal matrix (QR of a Gaussian; ``R = [1]`` for a
  power of two, where ``Q`` is the classic ``diag(±1) H/√n``).  SmolLM2's 576 = 9·64 and
  stories3M's 192 = 3·64 use a 9×9 and a 3×3 ``R``.  An odd factor over :data:`MAX_ODD` is refused
  (one-line error): the Hadamard part would be too small to mix the channels;
* the fold formulas on ``nn.Linear``-layout weights ``[out, in]`` (``y = x Wᵀ``): a layer
  reading a rotated stream ``x Q`` takes ``W Q`` (:func:`rotate_input`), a layer writing it takes
  ``Qᵀ W`` and ``b Q`` (:func:`rotate_output`), an RMSNorm weight ``w`` folds into its readers as
  ``W diag(w)`` (:func:`fold_scale`); per-head forms (:func:`rotate_head_outputs`,
  :func:`rotate_head_inputs`) apply one ``head_dim`` rotation to each head's block;
* the online form (QuaRot's rotation of down_proj's input): :func:`randomized_hadamard_parts` gives
  ``(s, R)`` of the same ``Q`` as :func:`randomized_hadamard`, and :func:`apply_randomized_hadamard`
  computes ``x Q`` with the fast transform (``O(n log n + n·m)``, no ``n×n`` matrix).  Folding it
  into a weight, ``W ← W Q``, is the same call on ``W``'s rows; at run time the input ``x`` becomes
  ``x Q``, so ``(x Q)(W Q)ᵀ = x Wᵀ`` (column-vector form: ``W' = W Q``, ``x' = Qᵀ x``).

Everything is computed in float64 and returned in the input's dtype.
"""
from __future__ import annotations

import torch

from ..errors import OneBitError

#: largest odd factor ``m`` of a size ``m·2ᵏ`` that :func:`randomized_hadamard` builds
MAX_ODD = 64


def is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def split_pow2(n: int) -> tuple[int, int]:
    """``(m, 2ᵏ)`` with ``n = m·2ᵏ`` and ``m`` odd."""
    if n < 1:
        raise OneBitError(f"rotation size must be >= 1, got {n}")
    p = n & -n
    return n // p, p


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sylvester's Hadamard matrix (entries ±1, ``H Hᵀ = n I``, symmetric) of a power-of-two ``n``."""
    if not is_pow2(n):
        raise OneBitError(f"a Sylvester Hadamard matrix needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def fwht(x: torch.Tensor) -> torch.Tensor:
    """``x @ (H/√n)`` along the last dimension (a power of two) in ``O(n log n)``: the normalized
    fast Walsh–Hadamard transform.  Its own inverse (``H/√n`` is symmetric and orthogonal)."""
    n = x.shape[-1]
    if not is_pow2(n):
        raise OneBitError(f"the fast Walsh-Hadamard transform needs a power-of-two size, got {n}")
    shape = x.shape
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack([a + b, a - b], dim=2)
        h *= 2
    return (y.reshape(shape) / n ** 0.5).to(x.dtype)


def random_orthogonal(m: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``m×m`` orthogonal matrix (Haar: QR of a Gaussian, signs of R's diagonal fixed)."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    a = torch.randn(m, m, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return (q * torch.sign(torch.diagonal(r))[None, :]).contiguous()


def randomized_hadamard_parts(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, R)`` (float64: ``n`` signs, an ``m×m`` orthogonal ``R``) of the randomized Hadamard
    ``Q = diag(s) (R ⊗ H/√2ᵏ)`` of size ``n = m·2ᵏ``; the same ``(n, seed)`` always gives the same."""
    m, p = split_pow2(n)
    if m > MAX_ODD:
        raise OneBitError(f"no randomized Hadamard rotation of size {n}: its odd factor {m} is over "
                          f"{MAX_ODD} (supported: m*2^k with odd m <= {MAX_ODD})")
    g = torch.Generator().manual_seed(int(seed))
    signs = torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1
    return signs, random_orthogonal(m, g)


def randomized_hadamard(n: int, seed: int = 0) -> torch.Tensor:
    """The orthogonal ``n×n`` float64 matrix ``diag(s) (R ⊗ H/√2ᵏ)`` (see the module docstring);
    the same ``(n, seed)`` always gives the same matrix."""
    signs, r = randomized_hadamard_parts(n, seed)
    p = n // r.shape[0]
    return signs[:, None] * torch.kron(r, hadamard(p) / p ** 0.5)


def apply_randomized_hadamard(x: torch.Tensor, signs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``x Q`` along the last dimension for ``Q = diag(signs) (R ⊗ H/√p)`` (``p = n / m``), without
    building ``Q``: with ``z = x ⊙ s`` seen as ``Z`` ``[m, p]``, ``z (R ⊗ K) = Rᵀ Z K`` and
    ``Z K`` is :func:`fwht` of each row.  Computed in ``x``'s dtype, or float32 for a 16-bit ``x``."""
    n, m = x.shape[-1], r.shape[0]
    if signs.shape != (n,) or n % m:
        raise OneBitError(f"a randomized Hadamard of {signs.shape[0]} signs and a {m}x{m} R cannot "
                          f"rotate vectors of size {n}")
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    z = (x.to(dt) * signs.to(dt)).reshape(*x.shape[:-1], m, n // m)
    z = fwht(z)
    if m > 1:
        z = torch.matmul(r.to(dt).T, z)
    return z.reshape(x.shape).to(x.dtype)


# ---------------------------------------------------------------- fold formulas on [out, in] weights
def fold_scale(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W diag(scale)``: a per-input-channel factor (an RMSNorm weight) moved into the reader."""
    return (w.to(torch.float64) * scale.to(torch.float64)[None, :]).to(w.dtype)


def rotate_input(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``W Q``: the weight of a layer (or the rows of an embedding / head) whose input becomes
    ``x Q``, so ``(x Q)(W Q)ᵀ = x Wᵀ``; for an embedding table ``E``, ``E Q`` is the rotated rows."""
    return (w.to(torch.float64) @ q.to(torch.float64)).to(w.dtype)


def rotate_output(w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``Qᵀ W``: the weight of a layer whose output ``y`` must become ``y Q``; a bias takes ``b Q``
    (:func:`rotate_bias`)."""
    return (q.to(torch.float64).T @ w.to(torch.float64)).to(w.dtype)


def rotate_bias(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (b.to(torch.float64) @ q.to(torch.float64)).to(b.dtype)


def rotate_head_outputs(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``W`` ``[heads·d, in]`` whose output heads each become ``y_j H`` (``H`` is ``d×d``):
    each head's row block ``W_j ← Hᵀ W_j``; a bias ``[heads·d]`` (1-D) takes ``b_j H``."""
    d = h.shape[0]
    h64 = h.to(torch.float64)
    if w.dim() == 1:
        return (w.to(torch.float64).view(-1, d) @ h64).reshape(w.shape).to(w.dtype)
    if w.shape[0] % d:
        raise OneBitError(f"{w.shape[0]} output rows are not whole heads of {d}")
    blocks = w.to(torch.float64).view(-1, d, w.shape[1])
    return torch.matmul(h64.T, blocks).reshape(w.shape).to(w.dtype)


def rotate_head_inputs(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``W`` ``[out, heads·d]`` reading heads that each became ``x_j H``: ``W ← W blockdiag(H)``."""
    d = h.shape[0]
    if w.shape[1] % d:
        raise OneBitError(f"{w.shape[1]} input columns are not whole heads of {d}")
    blocks = w.to(torch.float64).view(w.shape[0], -1, d)
    return (blocks @ h.to(torch.float64)).reshape(w.shape).to(w.dtype)
