import torch

import onebit.kernels  # noqa: F401
from onebit.formats.packing import pack_signs
from onebit.kernels import reference


def _dense(w, g, h, x):
    return (x * g) @ torch.where(w >= 0, 1.0, -1.0).T * h


def test_op_equals_dense_math():
    w, g, h, x = torch.randn(37, 19), torch.rand(19), torch.rand(37), torch.randn(2, 3, 19)
    y = torch.ops.onebit.binary_linear(x, pack_signs(w), g, h, 19)
    assert y.shape == (2, 3, 37)
    assert torch.allclose(y, _dense(w, g, h, x), rtol=1e-5, atol=1e-6)


def test_row_blocking_same_result(monkeypatch):
    w, g, h, x = torch.randn(50, 16), torch.rand(16), torch.rand(50), torch.randn(4, 16)
    full = torch.ops.onebit.binary_linear(x, pack_signs(w), g, h, 16)
    monkeypatch.setattr(reference, "ROW_BLOCK", 7)
    assert torch.allclose(reference.binary_linear_ref(x, pack_signs(w), g, h, 16), full, rtol=1e-5, atol=1e-6)


def test_fake_impl_traces():
    w, g, h = torch.randn(8, 16), torch.rand(16), torch.rand(8)
    p = pack_signs(w)
    f = torch.compile(lambda x: torch.ops.onebit.binary_linear(x, p, g, h, 16), backend="eager",
                      fullgraph=True)
    x = torch.randn(3, 16)
    assert torch.allclose(f(x), _dense(w, g, h, x), rtol=1e-5, atol=1e-6)


def test_opcheck():
    w, g, h, x = torch.randn(8, 16), torch.rand(16), torch.rand(8), torch.randn(3, 16)
    torch.library.opcheck(torch.ops.onebit.binary_linear.default, (x, pack_signs(w), g, h, 16),
                          test_utils=("test_schema", "test_faketensor"))


def test_ternary_op_equals_dense():
    from onebit.formats.packing import pack

    q = torch.randint(-1, 2, (21, 13))
    scale = torch.rand(21)
    x = torch.randn(5, 13)
    y = torch.ops.onebit.ternary_linear(x, pack((q + 1).to(torch.uint8), 2), scale, 13)
    assert torch.allclose(y, x @ q.float().T * scale, rtol=1e-5, atol=1e-6)
