"""Shared test data for the kernel backends: random packed layers and x in awkward layouts."""
from __future__ import annotations

import torch

from onebit.formats.packing import pack, pack_signs

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """‖y - ref‖ / ‖ref‖ in fp64."""
    y, ref = y.double(), ref.double()
    return ((y - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(y: torch.Tensor, ref: torch.Tensor) -> None:
    assert y.shape == ref.shape and y.dtype == ref.dtype
    tol = TOL[ref.dtype]
    assert rel_err(y, ref) <= tol, f"relative error {rel_err(y, ref):.2e} > {tol}"
    # and element-wise: no single output may be far off (scaled by the output's magnitude)
    scale = ref.double().abs().max().item()
    assert (y.double() - ref.double()).abs().max().item() <= 20 * tol * scale


def binary_layer(out_f: int, in_f: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=gen)
    g = (torch.rand(in_f, generator=gen) + 0.5).half()
    h = (torch.rand(out_f, generator=gen) + 0.5).half()
    return pack_signs(w), g, h


def ternary_layer(out_f: int, in_f: int, per_row: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-1, 2, (out_f, in_f), generator=gen)
    scale = torch.rand(out_f if per_row else 1, generator=gen) + 0.5
    return pack((q + 1).to(torch.uint8), 2), scale


def make_x(batch: int, in_f: int, dtype, layout: str = "contiguous", seed: int = 1):
    """x with ``batch`` rows: contiguous 2-D, 3-D, or non-contiguous (transposed / strided)."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return torch.randn(batch, in_f, generator=gen).to(dtype)
    if layout == "3d":
        return torch.randn(1, batch, in_f, generator=gen).to(dtype).expand(2, batch, in_f)
    if layout == "transposed":  # stride along in_features != 1
        return torch.randn(in_f, batch, generator=gen).to(dtype).t()
    if layout == "strided":  # every other column of a wider tensor
        return torch.randn(batch, 2 * in_f, generator=gen).to(dtype)[:, ::2]
    raise ValueError(layout)
