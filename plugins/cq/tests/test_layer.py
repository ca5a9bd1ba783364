"""ClusterLinear: packed codes round-trip on odd shapes, and the forward is the dequantized Linear."""

from __future__ import annotations

import pytest
import torch

from onecomp_cq import CQ, ClusterLinear


@pytest.mark.parametrize("shape", [(7, 13), (1, 5), (3, 1), (17, 9)])
@pytest.mark.parametrize("each_row", [True, False])
def test_packing_round_trip_and_forward(make_result, shape, each_row):
    result, dense = make_result(*shape, each_row=each_row)
    assert torch.equal(result.dequantize().float(), dense)
    linear = torch.nn.Linear(shape[1], shape[0], bias=True)
    layer = CQ().inference_layer(result, linear)
    assert torch.equal(layer.dequantize(), dense)
    x = torch.randn(2, 3, shape[1])
    expected = torch.nn.functional.linear(x, dense, linear.bias.detach().half().float())
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # loading the saved buffers into the empty layer from the saved row gives the same layer
    row = result.row(shape[0], shape[1], bias=True)
    empty = CQ.empty_layer(row)
    empty.load_state_dict(layer.state_dict())
    assert torch.equal(empty(x), layer(x))
    assert empty.state_problems() == []


def test_bits_and_buffers_are_the_real_size(make_result):
    result, _ = make_result(64, 172)
    layer = CQ().inference_layer(result, torch.nn.Linear(172, 64, bias=False))
    stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    assert stored == 64 * 172 // 8 + 2 * 64 * 2
    assert result.effective_bits(64, 172) == pytest.approx(8 * stored / (64 * 172))
    assert CQ().bits_for((64, 172)) == result.effective_bits(64, 172)
    assert CQ(each_row=False).bits_for((64, 172)) == pytest.approx(1 + 32 / (64 * 172))


def test_codes_packed_for_another_shape_are_refused(make_result):
    result, _ = make_result(3, 5)  # 15 codes: one padding bit
    layer = CQ().inference_layer(result, torch.nn.Linear(5, 3, bias=False))
    layer.codes[-1] &= 0xFE
    assert layer.state_problems()


@pytest.mark.parametrize("cache", [False, True])
def test_cached_signs_agree(make_result, cache):
    result, dense = make_result(5, 7)
    layer = ClusterLinear.from_parts(
        result.codes, result.left_mean, result.right_mean, (5, 7), cache_signs=cache
    )
    x = torch.randn(4, 7)
    assert torch.equal(layer(x), layer(x))
    assert (layer._signs is not None) == cache
