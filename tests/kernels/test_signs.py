"""Sign packing (``onecomp_core.kernels``): the seed's bp1/bp3 byte format, exactly."""

import pytest
import torch

from onecomp_core.kernels import pack_signs, packed_size, unpack_signs


@pytest.mark.parametrize("shape", [(5, 7), (1, 9), (13, 11), (8, 8), (1, 1)])
def test_round_trip_odd_shapes(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    signs = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
    packed = pack_signs(signs)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_size(*shape) == -(-shape[0] * shape[1] // 8)
    assert torch.equal(unpack_signs(packed, *shape), signs)


def test_layout_row_major_msb_first_one_is_plus_and_plus_one_padding():
    # row-major stream: + - - + + + + -   | + + (then 6 padding bits, all +1)
    signs = torch.tensor([[1.0, -1, -1, 1, 1], [1, 1, -1, 1, 1]])
    packed = pack_signs(signs)
    assert packed.tolist() == [0b10011110, 0b11111111]


def test_zero_counts_as_plus_one():
    assert pack_signs(torch.zeros(1, 8)).tolist() == [255]


def test_unpack_rejects_wrong_size():
    with pytest.raises(ValueError, match="needs 2"):
        unpack_signs(torch.zeros(3, dtype=torch.uint8), 3, 5)
