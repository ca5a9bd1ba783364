"""ARB's saved layer (the core's ScaledSignLinear): packed signs round-trip on odd shapes, and the
forward is the dequantized Linear."""

from __future__ import annotations

import pytest
import torch

from onecomp_arb import ARB


@pytest.mark.parametrize("shape", [(7, 13), (1, 5), (3, 1), (17, 9)])
@pytest.mark.parametrize("variant", ["rc", "x", "arb"])
def test_packing_round_trip_and_forward(make_result, shape, variant):
    result, dense = make_result(*shape, variant)
    assert torch.equal(result.dequantize().float(), dense.half().float())
    linear = torch.nn.Linear(shape[1], shape[0], bias=True)
    layer = ARB(variant=variant).inference_layer(result, linear)
    torch.testing.assert_close(layer.dequantize(), dense)
    x = torch.randn(2, 3, shape[1])
    expected = torch.nn.functional.linear(x, dense, linear.bias.detach().half().float())
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    row = result.row(shape[0], shape[1], bias=True)
    empty = ARB.empty_layer(row)
    empty.load_state_dict(layer.state_dict())
    assert torch.equal(empty(x), layer(x))
    assert empty.state_problems() == []


@pytest.mark.parametrize("variant", ["rc", "x"])
def test_bits_and_buffers_are_the_real_size(make_result, variant):
    p, m = 64, 172
    result, _ = make_result(p, m, variant)
    layer = ARB(variant=variant).inference_layer(result, torch.nn.Linear(m, p, bias=False))
    stored = sum(t.numel() * t.element_size() for t in layer.state_dict().values())
    vectors = (p + m) if variant == "rc" else 2 * p
    assert stored == p * m // 8 + 2 * vectors
    assert result.effective_bits(p, m) == pytest.approx(8 * stored / (p * m))
    assert ARB(variant=variant).bits_for((p, m)) == result.effective_bits(p, m)
