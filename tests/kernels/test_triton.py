"""Triton kernels against the reference.  Without a GPU they run in Triton's interpreter
(``TRITON_INTERPRET=1`` on CPU tensors), on small shapes so that it stays fast."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the @triton.jit functions are made
pytest.importorskip("triton", reason="triton not installed (pip install 'onebit[triton]')")

from onebit.kernels.reference import binary_linear_ref, ternary_linear_ref  # noqa: E402
from onebit.kernels.triton.packed_linear import (  # noqa: E402
    binary_linear_triton, ternary_linear_triton)

from ._cases import assert_close, binary_layer, make_x, ternary_layer  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _to(*ts):
    return [t.to(DEV) for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3, 16, 40], ids=lambda b: f"M{b}")
def test_binary(dtype, batch):
    p, g, h = binary_layer(37, 172)  # 172: not a multiple of 8 or of the K tile
    x = make_x(batch, 172, dtype)
    ref = binary_linear_ref(x, p, g, h, 172)
    y = binary_linear_triton(*_to(x, p, g, h), 172)
    assert_close(y.cpu(), ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 20], ids=lambda b: f"M{b}")
def test_ternary(dtype, batch):
    for per_row in (True, False):
        p, scale = ternary_layer(37, 172, per_row)
        x = make_x(batch, 172, dtype)
        ref = ternary_linear_ref(x, p, scale, 172)
        assert_close(ternary_linear_triton(*_to(x, p, scale), 172).cpu(), ref)


@pytest.mark.parametrize("layout", ["3d", "transposed", "strided"])
def test_layouts(layout):
    p, g, h = binary_layer(21, 100)
    x = make_x(3, 100, torch.float16, layout)
    assert_close(binary_linear_triton(*_to(x, p, g, h), 100).cpu(), binary_linear_ref(x, p, g, h, 100))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_k_decode(dtype):
    """Decode launch with K split over 3 programs (partials reduced after the kernel)."""
    p, g, h = binary_layer(40, 300)
    x = make_x(2, 300, dtype)
    y = binary_linear_triton(*_to(x, p, g, h), 300, config=(16, 32, 64, 3))
    assert_close(y.cpu(), binary_linear_ref(x, p, g, h, 300))


def test_forced_reference(monkeypatch):
    monkeypatch.setenv("ONEBIT_KERNEL", "reference")
    p, g, h = binary_layer(8, 16)
    x = make_x(2, 16, torch.float32)
    assert torch.equal(binary_linear_triton(x, p, g, h, 16), binary_linear_ref(x, p, g, h, 16))
