"""Quantizer math: identities, error bounds, zero points, groups, BitNet."""
import pytest
import torch

from onebit.formats.packing import pack, pack_signs, unpack, unpack_signs
from onebit.methods.actquant import (MinMaxObserver, MovingAverageObserver, PercentileObserver,
                                     quantize_activations)
from onebit.methods.quant import (binarize, dequantize_codes, fake_quantize, find_qparams, params_shape,
                                  quantize_codes, rtn_quantize, ternarize)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_representable_values_are_exact(bits, sym):
    # a weight already on the grid (codes, scale exactly representable in fp16) comes back unchanged
    out, cols = 6, 40
    scale = torch.full((out, 1), 0.125)
    codes = torch.randint(0, 2 ** bits, (out, cols)).to(torch.uint8)
    zero = torch.full((out, 1), float(2 ** (bits - 1))) if sym else torch.randint(0, 2 ** bits, (out, 1)).float()
    w = dequantize_codes(codes, scale, zero, 0)
    w_hat = fake_quantize(w, bits, sym, 0)
    # the grid found from w's range may differ from (scale, zero) but w itself is representable
    # whenever w spans the grid's full range; check the stronger statement on the codes' own grid:
    assert torch.equal(quantize_codes(w, scale, zero, bits, 0), codes)
    assert torch.allclose(w_hat, w, atol=float(find_qparams(w, bits, sym, 0)[0].max()) / 2 + 1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("group_size", [-1, 0, 16, 24])
@pytest.mark.parametrize("sym", [True, False])
def test_error_bound_half_step(bits, group_size, sym):
    w = torch.randn(9, 72)
    codes, scale, zero = rtn_quantize(w, bits, sym, group_size, scale_dtype=None)  # exact scales
    assert scale.shape == params_shape(9, 72, group_size)
    assert int(codes.max()) < 2 ** bits
    w_hat = dequantize_codes(codes, scale, zero, group_size)
    from onebit.methods.quant import expand_params

    step = expand_params(scale, 9, 72, group_size).expand(9, 72)
    # inside the grid's range the error is at most half a step (fp16 scale rounding: tiny slack)
    assert ((w - w_hat).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()
    # fp16 scales: codes stay within half a step of their own (rounded) grid, up to the grid's end
    c16, s16, z16 = rtn_quantize(w, bits, sym, group_size)
    err16 = (dequantize_codes(c16, s16, z16, group_size) - w).abs()
    assert (err16 <= expand_params(s16, 9, 72, group_size) * (0.5 + 2 ** bits * 2 ** -11) + 1e-6).all()


def test_asymmetric_zero_point_all_positive_group():
    w = torch.rand(4, 32) + 1.0                       # all positive: xmin is clamped to 0
    codes, scale, zero = rtn_quantize(w, 4, sym=False, group_size=0)
    assert (zero == 0).all()                          # zero point at code 0
    sym_err = (fake_quantize(w, 4, True, 0) - w).abs().mean()
    asym_err = (dequantize_codes(codes, scale, zero, 0) - w).abs().mean()
    assert asym_err < sym_err                         # the zero point buys back the unused half


def test_asymmetric_shifted_range():
    w = torch.linspace(-1, 3, 16).repeat(2, 1)        # xmin=-1, xmax=3 -> scale 4/15, zero round(15/4)=4
    _, scale, zero = rtn_quantize(w, 4, sym=False, scale_dtype=None)
    assert torch.allclose(scale, torch.full((2, 1), 4 / 15))
    assert torch.equal(zero, torch.full((2, 1), 4.0))
    assert fake_quantize(torch.zeros(1, 4), 4, sym=False).abs().max() == 0   # 0 is exact


@pytest.mark.parametrize("cols,gs", [(70, 32), (33, 32), (5, 4), (64, 64)])
def test_groups_not_dividing_in_features(cols, gs):
    w = torch.randn(3, cols)
    w[:, -1] = 50.0                                   # an outlier only in the last (short) group
    codes, scale, zero = rtn_quantize(w, 4, True, gs)
    assert scale.shape == (3, (cols + gs - 1) // gs)
    w_hat = dequantize_codes(codes, scale, zero, gs)
    assert w_hat.shape == w.shape
    if cols > gs:  # the first group's scale ignores the outlier
        assert scale[0, 0] < 1.0 and scale[0, -1] > 5.0
    # each group quantized alone gives the same codes
    for g in range(scale.shape[1]):
        sl = slice(g * gs, min(cols, (g + 1) * gs))
        c2, _, _ = rtn_quantize(w[:, sl], 4, True, 0)
        assert torch.equal(c2, codes[:, sl])


def test_group_size_errors():
    from onebit.methods.quant import check_group_size

    with pytest.raises(ValueError, match="larger"):
        check_group_size(128, 64)
    with pytest.raises(ValueError):
        check_group_size(-2)


def test_mse_clip_never_worse_than_minmax():
    w = torch.randn(16, 128)
    w[:, 0] = 8.0                                     # outliers stretch the min-max grid
    e_mm = (fake_quantize(w, 3, True, 0, "minmax") - w).pow(2).sum()
    e_mse = (fake_quantize(w, 3, True, 0, "mse") - w).pow(2).sum()
    assert e_mse < e_mm


def test_zero_row_and_tiny_values():
    w = torch.zeros(2, 8)
    assert torch.equal(fake_quantize(w, 4), w)
    w = torch.full((1, 8), 1e-9)
    assert torch.isfinite(fake_quantize(w, 4)).all()


def test_binarize_and_pack_roundtrip():
    w = torch.randn(7, 29) + 0.3
    s, scale = binarize(w)
    assert torch.equal(s, torch.where(w - w.mean() >= 0, 1.0, -1.0))
    assert torch.isclose(scale, w.abs().mean())
    assert torch.equal(unpack_signs(pack_signs(s), 29), s)


def test_ternarize_and_pack_roundtrip():
    w = torch.randn(7, 29)
    q, gamma = ternarize(w)
    assert set(q.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.isclose(gamma, w.abs().mean())
    assert torch.equal(q, torch.clamp(torch.round(w / w.abs().mean()), -1, 1))
    codes = (q + 1).to(torch.uint8)
    assert torch.equal(unpack(pack(codes, 2), 2, 29).float() - 1, q)


def test_activation_quant_per_token_and_static():
    x = torch.randn(3, 5, 16) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1)
    xq = quantize_activations(x, 8)
    s = x.abs().amax(-1, keepdim=True) / 127
    assert ((xq - x).abs() <= s / 2 + 1e-7).all()        # per-token half-step bound
    assert torch.equal(quantize_activations(x, 0), x)
    # representable values are exact
    grid = torch.randint(-127, 128, (4, 16)).float() * 0.5
    assert torch.equal(quantize_activations(grid, 8, torch.tensor([0.5])), grid)
    # static scale clips what it does not cover
    assert quantize_activations(torch.tensor([[1000.0]]), 8, torch.tensor([0.01])).item() == pytest.approx(1.27)


def test_observers():
    batches = [torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5])]
    mm, ema, pc = MinMaxObserver(), MovingAverageObserver(), PercentileObserver(50)
    for b in batches:
        for o in (mm, ema, pc):
            o.update(b)
    assert mm.absmax() == 4.0
    assert ema.absmax() == pytest.approx(0.9 * 2 + 0.1 * 4)
    assert pc.absmax() == pytest.approx((1.0 + 0.5) / 2)
