"""Bit packing in the GPTQ layout: one little-endian bit stream of b-bit codes per column."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import (
    PackedIntLinear,
    pack_dim0,
    pack_dim1,
    packed_length,
    unpack_dim0,
    unpack_dim1,
)


def decode_by_hand(packed: torch.Tensor, bits: int, n: int) -> list[list[int]]:
    """Independent decoder: bit k of code i sits at stream position i·b + k of its column."""
    words = [[int(v) & 0xFFFFFFFF for v in row] for row in packed.tolist()]
    columns = len(words[0])
    codes = []
    for i in range(n):
        row = []
        for j in range(columns):
            value = 0
            for k in range(bits):
                position = i * bits + k
                bit = (words[position // 32][j] >> (position % 32)) & 1
                value |= bit << k
            row.append(value)
        codes.append(row)
    return codes


def random_codes(n: int, m: int, bits: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, (n, m), generator=g, dtype=torch.int64)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_dim0_round_trips_on_odd_shapes(bits):
    codes = random_codes(37, 5, bits, seed=bits)
    packed = pack_dim0(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (packed_length(37, bits), 5)
    assert torch.equal(unpack_dim0(packed, bits, 37).long(), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_the_layout_matches_an_independent_decoder(bits):
    codes = random_codes(29, 3, bits, seed=10 + bits)
    assert decode_by_hand(pack_dim0(codes, bits), bits, 29) == codes.tolist()


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_pack_dim1_round_trips(bits):
    codes = random_codes(4, 19, bits, seed=bits)
    packed = pack_dim1(codes, bits)
    assert packed.shape == (4, packed_length(19, bits))
    assert torch.equal(unpack_dim1(packed, bits, 19).long(), codes)
    assert decode_by_hand(packed.t(), bits, 19) == codes.t().tolist()


def test_a_known_word():
    codes = torch.arange(1, 9).view(8, 1)  # 4-bit codes 1..8, lowest first
    packed = pack_dim0(codes, 4)
    assert packed.item() == 0x87654321 - 2**32  # high bit set: negative as int32


def test_three_bit_codes_cross_word_boundaries():
    codes = torch.full((11, 1), 0b101)  # 33 bits: the 11th code sits at bits 30, 31, 32
    packed = pack_dim0(codes, 3)
    assert packed.shape == (2, 1)
    assert (int(packed[0, 0]) & 0xFFFFFFFF) >> 30 == 0b01  # its low two bits end word 0
    assert int(packed[1, 0]) == 1  # its high bit opens word 1
    assert unpack_dim0(packed, 3, 11).flatten().tolist() == [5] * 11


def test_padding_bits_are_zero():
    packed = pack_dim0(torch.full((3, 1), 7), 3)  # 9 bits used of 32
    assert int(packed[0, 0]) == (1 << 9) - 1


def test_out_of_range_values_are_masked_and_never_touch_neighbours():
    codes = torch.tensor([[3], [-1], [16 + 5], [0]])  # -1 and 21 do not fit 4 bits
    unpacked = unpack_dim0(pack_dim0(codes, 4), 4, 4).flatten().tolist()
    assert unpacked == [3, 15, 5, 0]


def test_unsupported_widths_are_refused():
    with pytest.raises(ValueError, match="1 to 8 bits"):
        pack_dim0(torch.zeros(4, 1), 9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("zero_offset", [0, 1])
def test_zero_points_of_zero_survive_and_leave_neighbours_alone(bits, zero_offset):
    """Asymmetric grids give zero = 0; legacy v1 storage writes zero − 1 = −1 (all ones)."""
    out_features, groups, in_features = 13, 3, 24
    top = (1 << bits) - 1
    zeros = torch.tensor([0, top, 1, 0, 0, top // 2, 0, top, 2, 0, 0, 1, 0])
    zeros = torch.stack([zeros.roll(s) for s in range(groups)], dim=1)  # (out, groups)
    codes = random_codes(out_features, in_features, bits)
    scales = torch.rand(out_features, groups) + 0.5
    g_idx = torch.arange(in_features) // 8
    layer = PackedIntLinear.from_codes(codes, scales, zeros, g_idx, bits, zero_offset=zero_offset)
    assert torch.equal(layer.zeros(), zeros.t())
    assert torch.equal(layer.codes().long(), codes)
    expected = scales.half().float()[:, g_idx] * (codes - zeros[:, g_idx]).float()
    assert torch.equal(layer.dequantize(), expected.half())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_the_word_path_packs_the_bits_the_stream_packs(bits):
    """Widths dividing 32 skip the bit stream; uint8 and transposed (non-contiguous) codes
    must give the stream's words exactly, including the zero padding of the last word."""
    from onecomp_core.kernels.packing import _pack_stream, _pack_whole_codes

    codes = random_codes(301, 70, bits, seed=bits).to(torch.uint8)
    for case in (codes, codes.t().contiguous().t(), codes[:, ::2]):
        assert torch.equal(_pack_whole_codes(case, bits), _pack_stream(case, bits))
