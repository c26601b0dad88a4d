"""torch.ops.onebit.decode_attention (attention_cpu.cpp): the AVX-512 and AVX2 kernels against the
pure-torch reference on odd shapes (grouped heads, tails of positions, head_dim not a multiple of 64, strided
cache slices), and the paths that must fall back to the reference."""
from __future__ import annotations

import pytest
import torch

from onebit.kernels import dispatch
from onebit.kernels.cpu import loader
from onebit.kernels.reference import decode_attention_ref

from ._cases import rel_err


def avx512() -> bool:
    mod = loader.load()
    return mod is not None and mod.best_isa() == 2


@pytest.fixture(params=["avx512", "avx2"])
def isa(request, monkeypatch):
    """Each kernel, the CPU's ISA capped by ONEBIT_CPU_ISA (skipped where the CPU lacks it)."""
    mod = loader.load()
    if mod is None or mod.best_isa() < {"avx512": 2, "avx2": 1}[request.param]:
        pytest.skip(f"the kernel needs {request.param}")
    monkeypatch.setenv("ONEBIT_CPU_ISA", request.param)
    return request.param


def cache(nkv, d, length, max_len, dtype=torch.float32, seed=0):
    """K (transposed) and V slices of a static cache of max_len positions, as LlamaRuntime holds them."""
    gen = torch.Generator().manual_seed(seed)
    kt = torch.randn(nkv, d, max_len, generator=gen).to(dtype)
    v = torch.randn(nkv, max_len, d, generator=gen).to(dtype)
    return kt[:, :, :length], v[:, :length]


# (heads, kv heads, head_dim, positions): GQA groups of 8 / 3 / 1, 17 heads per KV head (> 8),
# head_dim 64 / 32 / 16 / 80 / 128, positions 1, < 16, tails, long
CASES = [(32, 4, 64, 544), (9, 3, 64, 17), (4, 4, 32, 1), (8, 2, 128, 100), (16, 1, 16, 33), (17, 1, 80, 70),
         (6, 2, 64, 16)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_matches_reference(case, isa):
    nh, nkv, d, length = case
    kt, v = cache(nkv, d, length, length + 37, seed=length)
    q = torch.randn(nh, d, generator=torch.Generator().manual_seed(1)) * 2
    y = torch.ops.onebit.decode_attention(q, kt, v, d ** -0.5)
    ref = decode_attention_ref(q, kt, v, d ** -0.5)
    assert y.shape == ref.shape == (nh, d)
    assert rel_err(y, ref) < 1e-5, rel_err(y, ref)


def test_kernel_handles_large_scores(isa):
    """Scores far apart (the softmax's max subtracted first): no overflow, the peak position wins."""
    kt, v = cache(2, 64, 50, 64, seed=3)
    q = torch.randn(4, 64) * 40
    y = torch.ops.onebit.decode_attention(q, kt, v, 1.0)
    assert torch.isfinite(y).all()
    assert rel_err(y, decode_attention_ref(q, kt, v, 1.0)) < 1e-5


def test_fallbacks_equal_the_reference(monkeypatch):
    """bf16 tensors, head_dim not a multiple of 16, and the scalar ISA take the reference."""
    kt, v = cache(2, 64, 20, 32, torch.bfloat16)
    q = torch.randn(4, 64).to(torch.bfloat16)
    assert torch.equal(torch.ops.onebit.decode_attention(q, kt, v, 0.125), decode_attention_ref(q, kt, v, 0.125))
    kt, v = cache(2, 24, 20, 32)
    q = torch.randn(4, 24)
    assert torch.equal(torch.ops.onebit.decode_attention(q, kt, v, 0.2), decode_attention_ref(q, kt, v, 0.2))
    monkeypatch.setenv("ONEBIT_CPU_ISA", "scalar")
    kt, v = cache(2, 64, 20, 32)
    q = torch.randn(4, 64)
    assert torch.equal(torch.ops.onebit.decode_attention(q, kt, v, 0.125), decode_attention_ref(q, kt, v, 0.125))


def test_registered_on_cpu():
    assert dispatch.registered_kernels("cpu")["decode_attention"] == "cpu"


def test_kernels_differ_from_the_reference_where_used(isa):
    """The kernel really runs (its exp polynomial and summation order differ from torch's in the
    last bits), so the tests above cannot pass by falling back to the reference."""
    kt, v = cache(4, 64, 300, 320, seed=9)
    q = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    y = torch.ops.onebit.decode_attention(q, kt, v, 0.125)
    ref = decode_attention_ref(q, kt, v, 0.125)
    assert not torch.equal(y, ref) and rel_err(y, ref) < 1e-5
