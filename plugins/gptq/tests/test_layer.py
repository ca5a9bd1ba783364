"""GPTQLinear: the standard GPTQ layout, read back by an independent straightforward decoder."""

from __future__ import annotations

import pytest
import torch
from onecomp_core.kernels import unpack_dim0

from onecomp_gptq.layer import GPTQLinear


def _decode_stream(words: list[int], bits: int, n: int) -> list[int]:
    """Bit by bit over Python ints: code k is bits [k·b, (k+1)·b) of the little-endian stream."""
    stream = 0
    for index, word in enumerate(words):
        stream |= (word & 0xFFFFFFFF) << (32 * index)
    return [(stream >> (k * bits)) & ((1 << bits) - 1) for k in range(n)]


def _reference_weight(layer: GPTQLinear, offset: int) -> torch.Tensor:
    """Dequantize column by column from the raw int32 buffers, without the layer's code."""
    bits, n_in, n_out = layer.bits, layer.in_features, layer.out_features
    weight = torch.empty(n_out, n_in)
    codes = [_decode_stream(layer.qweight[:, o].tolist(), bits, n_in) for o in range(n_out)]
    for gi in range(layer.scales.shape[0]):
        stored = _decode_stream(layer.qzeros[gi].tolist(), bits, n_out)
        for o in range(n_out):
            zero = (stored[o] + offset) % (1 << bits)
            for i in range(n_in):
                if int(layer.g_idx[i]) == gi:
                    weight[o, i] = float(layer.scales[gi, o]) * (codes[o][i] - zero)
    return weight


def _random_layer_inputs(bits: int, n_out: int, n_in: int, groups: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n_out, n_in), generator=g, dtype=torch.uint8)
    scales = (torch.rand(n_out, groups, generator=g) + 0.1).half()
    zeros = torch.randint(0, 1 << bits, (n_out, groups), generator=g, dtype=torch.uint8)
    zeros[0, :] = 0  # asymmetric zero point 0: must not borrow into its neighbours
    zeros[1, :] = (1 << bits) - 1
    g_idx = torch.randperm(n_in, generator=g).int() % groups  # act-order style, unsorted
    return codes, scales, zeros, g_idx


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_pack_round_trip_and_independent_decoding(bits: int, fmt: str) -> None:
    n_out, n_in, groups = 13, 44, 3  # odd sizes: 3-bit codes straddle words in both dims
    codes, scales, zeros, g_idx = _random_layer_inputs(bits, n_out, n_in, groups)
    layer = GPTQLinear.from_codes(codes, scales, zeros, g_idx, bits, checkpoint_format=fmt)
    assert layer.qweight.dtype == torch.int32 and layer.qweight.shape == (
        -(-n_in * bits // 32),
        n_out,
    )
    assert layer.qzeros.shape == (groups, -(-n_out * bits // 32))
    assert layer.scales.dtype == torch.float16 and layer.scales.shape == (groups, n_out)
    assert torch.equal(layer.codes(), codes)
    assert torch.equal(layer.zeros().t(), zeros.long())
    expected = scales.float().gather(1, g_idx.long().expand(n_out, -1)) * (
        codes.float() - zeros.float().gather(1, g_idx.long().expand(n_out, -1))
    )
    offset = 1 if fmt == "gptq" else 0
    assert torch.allclose(_reference_weight(layer, offset), expected)
    assert torch.equal(layer.dequantize(), expected.half())  # fp16, like the fake-quantized weight


def test_v1_stores_zero_minus_one_masked_and_v2_raw() -> None:
    codes = torch.zeros(8, 8, dtype=torch.uint8)
    zeros = torch.tensor([[0], [1], [2], [3], [4], [5], [6], [15]], dtype=torch.uint8)
    scales = torch.ones(8, 1).half()
    g_idx = torch.zeros(8, dtype=torch.int32)
    v1 = GPTQLinear.from_codes(codes, scales, zeros, g_idx, 4, checkpoint_format="gptq")
    v2 = GPTQLinear.from_codes(codes, scales, zeros, g_idx, 4, checkpoint_format="gptq_v2")
    nibbles = lambda word: [(word >> (4 * k)) & 0xF for k in range(8)]  # noqa: E731
    assert nibbles(int(v1.qzeros[0, 0]) & 0xFFFFFFFF) == [15, 0, 1, 2, 3, 4, 5, 14]
    assert nibbles(int(v2.qzeros[0, 0]) & 0xFFFFFFFF) == [0, 1, 2, 3, 4, 5, 6, 15]
    assert torch.equal(v1.zeros(), v2.zeros())


def test_unpacking_matches_python_decoder_for_every_width() -> None:
    g = torch.Generator().manual_seed(1)
    for bits in range(1, 9):
        words = torch.randint(-(2**31), 2**31 - 1, (7, 2), generator=g, dtype=torch.int64)
        n = 7 * 32 // bits
        got = unpack_dim0(words.to(torch.int32), bits, n)
        for col in range(2):
            assert got[:, col].tolist() == _decode_stream(words[:, col].tolist(), bits, n)


def test_forward_matches_dense_and_state_dict_loads_into_empty_layer() -> None:
    codes, scales, zeros, g_idx = _random_layer_inputs(4, 24, 40, 2)
    g_idx = torch.arange(40, dtype=torch.int32) // 32  # last group shorter (40 = 32 + 8)
    bias = torch.randn(24)
    layer = GPTQLinear.from_codes(codes, scales, zeros, g_idx, 4, bias=bias)
    x = torch.randn(3, 40)
    dense = torch.nn.functional.linear(x, layer.dequantize().float(), bias.half().float())
    assert torch.allclose(layer(x), dense, atol=1e-5)
    empty = GPTQLinear.empty(40, 24, 4, 32, bias=True, cache_weight=True)
    assert {k: v.shape for k, v in empty.state_dict().items()} == {
        k: v.shape for k, v in layer.state_dict().items()
    }
    empty(x)  # caches a weight of zeros...
    empty.load_state_dict(layer.state_dict())
    assert torch.allclose(empty(x), dense, atol=1e-5)  # ...which loading must forget


def test_bad_checkpoint_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="checkpoint_format='gptq_v3'"):
        GPTQLinear(8, 8, 4, 1, checkpoint_format="gptq_v3")


def test_dense_weight_is_cached_only_on_request_and_forgotten_on_load() -> None:
    codes, scales, zeros, g_idx = _random_layer_inputs(4, 8, 32, 1)
    layer = GPTQLinear.from_codes(codes, scales, zeros, g_idx, 4)
    x = torch.randn(2, 32)
    layer(x)
    assert layer._cached is None  # memory first: a 4-bit model must not grow fp16 copies
    layer.cache_weight = True
    first = layer(x)
    assert layer._cached is not None
    other = GPTQLinear.from_codes(codes, scales * 2, zeros, g_idx, 4)
    layer.load_state_dict(other.state_dict())
    assert layer._cached is None
    assert torch.allclose(layer(x), 2 * first, atol=1e-3)
