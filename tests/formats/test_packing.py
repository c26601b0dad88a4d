import pytest
import torch

from onebit.formats.packing import pack, pack_signs, packed_cols, unpack, unpack_signs


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("cols", [1, 3, 7, 8, 9, 64, 172, 173])
def test_roundtrip_bit_exact(bits, cols):
    codes = torch.randint(0, 2 ** bits, (5, cols), dtype=torch.uint8)
    p = pack(codes, bits)
    assert p.dtype == torch.uint8 and p.shape == (5, packed_cols(cols, bits))
    assert torch.equal(unpack(p, bits, cols), codes)


def test_bit_order_lsb_first():
    # codes 1,0,0,0,0,0,0,1 -> bit 0 and bit 7 set = 0b10000001
    codes = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.uint8)
    p = pack(codes, 1)
    assert p.tolist() == [[0b10000001, 0b00000001]]
    assert pack(torch.tensor([[3, 0, 1, 2]], dtype=torch.uint8), 2).tolist() == [[0b10_01_00_11]]


def test_signs_roundtrip_and_zero_convention():
    w = torch.randn(11, 172)
    w[0, :5] = 0.0
    s = unpack_signs(pack_signs(w), 172)
    assert torch.equal(s, torch.where(w >= 0, 1.0, -1.0))
    assert (s[0, :5] == 1).all()


def test_padding_bits_are_zero():
    p = pack_signs(torch.ones(2, 9))
    assert p[:, 1].tolist() == [1, 1]


def test_errors():
    with pytest.raises(ValueError):
        pack(torch.zeros(2, 2, dtype=torch.uint8), 9)
    with pytest.raises(TypeError):
        pack(torch.zeros(2, 2), 1)
    with pytest.raises(ValueError):
        unpack(torch.zeros(2, 1, dtype=torch.uint8), 1, 9)


def test_3bit_stream_layout():
    # codes 0..7: stream bits little-endian, 3 per code -> 0o76543210 as a 24-bit integer
    codes = torch.arange(8, dtype=torch.uint8)[None]
    p = pack(codes, 3)
    word = int(p[0, 0]) | int(p[0, 1]) << 8 | int(p[0, 2]) << 16
    assert word == sum(i << (3 * i) for i in range(8))
    assert packed_cols(9, 3) == 4 and packed_cols(8, 3) == 3
    assert pack(torch.full((1, 9), 7, dtype=torch.uint8), 3)[0, 3] == 0b111  # high bits of last byte zero
