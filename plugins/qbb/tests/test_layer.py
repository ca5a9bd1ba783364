"""The packed inference layer: packing round trips on odd shapes, forward = dense product."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import pack_signs
from onecomp_qbb import QBB, BinaryBasesLinear, QBBResult


@pytest.mark.parametrize(("p", "m", "n"), [(7, 13, 3), (1, 5, 1), (9, 9, 4)])
def test_signs_round_trip_and_forward_is_the_dense_product(p, m, n):
    g = torch.Generator().manual_seed(p * m)
    signs = torch.where(torch.randn(n, p, m, generator=g) >= 0, 1.0, -1.0)
    alphas = torch.rand(n, m, generator=g).half()
    bias = torch.randn(p, generator=g)
    layer = BinaryBasesLinear.from_parts(signs, alphas, p, bias)
    assert layer.signs.dtype == torch.uint8 and layer.signs.shape == (n, -(-p * m // 8))
    assert torch.equal(layer.unpacked_signs(), signs)
    dense = (signs * alphas.float()[:, None, :]).sum(0)
    assert torch.equal(layer.dequantize(), dense)
    x = torch.randn(2, 3, m, generator=g)
    torch.testing.assert_close(layer(x), x @ dense.t() + bias.half().float())
    assert layer.state_problems() == []


def test_empty_layer_loads_the_saved_tensors_and_checks_padding():
    result = QBBResult(
        signs=torch.stack([pack_signs(torch.ones(3, 5)), pack_signs(-torch.ones(3, 5))]),
        alphas=torch.tensor([[1.0, 2, 3, 4, 5], [0.5] * 5]).half(),
        out_features=3,
        in_features=5,
        wbits=2,
    )
    linear = torch.nn.Linear(5, 3, bias=False)
    built = QBB(wbits=2).inference_layer(result, linear)
    row = result.row(3, 5, False)
    assert row["effective_bits"] == pytest.approx(2 + 32 / 3, abs=1e-5)
    empty = QBB.empty_layer(row)
    empty.load_state_dict(built.state_dict())
    assert torch.equal(empty.dequantize(), result.dequantize().float())
    empty.signs[0, -1] = 0  # padding bits must stay +1
    assert empty.state_problems()
