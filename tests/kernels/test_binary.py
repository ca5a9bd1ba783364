"""1-bit kernels: banded packed-sign products, the scaled-sign layer, straight-through signs."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import (
    ScaledSignLinear,
    ScaledSignsTwin,
    pack_signs,
    sign_bits,
    sign_matmul,
    ste_sign,
)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (13, 7), (17, 33), (40, 9)])
def test_sign_matmul_matches_the_dense_product_on_odd_shapes(shape):
    gen = torch.Generator().manual_seed(0)
    rows, cols = shape
    s = torch.where(torch.randn(rows, cols, generator=gen) >= 0, 1.0, -1.0)
    x = torch.randn(2, 3, cols, generator=gen)
    # tiny bands (8 rows) so several bands and a ragged last band are exercised
    got = sign_matmul(x, pack_signs(s), rows, cols, chunk_elements=1)
    assert torch.allclose(got, x @ s.t(), atol=1e-5)


@pytest.mark.parametrize("col, offset, bias", [(False, False, False), (True, True, True)])
def test_scaled_sign_linear_computes_its_formula(col, offset, bias):
    gen = torch.Generator().manual_seed(1)
    n, m = 11, 13
    s = torch.where(torch.randn(n, m, generator=gen) >= 0, 1.0, -1.0)
    r = torch.rand(n, generator=gen).half()
    c = torch.rand(m, generator=gen).half() if col else None
    mu = torch.randn(n, generator=gen).half() if offset else None
    b = torch.randn(n, generator=gen).half() if bias else None
    layer = ScaledSignLinear.from_parts(s, r, c, mu, b)
    x = torch.randn(4, m, generator=gen)
    w = r.float()[:, None] * s * (c.float()[None, :] if col else 1)
    if offset:
        w = w + mu.float()[:, None]
    expected = x @ w.t() + (b.float() if bias else 0)
    assert torch.allclose(layer(x), expected, atol=1e-4)
    assert torch.allclose(layer.dequantize(), w)
    assert layer.state_problems() == []
    empty = ScaledSignLinear.from_row(
        {"in_features": m, "out_features": n, "col_scale": col, "row_offset": offset, "bias": bias}
    )
    empty.load_state_dict(layer.state_dict())
    assert torch.equal(empty(x), layer(x))


def test_sign_bits_is_onebits_formula():
    assert sign_bits(4096, 4096, row_vectors=1, col_vectors=1) == pytest.approx(1.0078125)


def test_ste_sign_passes_gradients_straight_through():
    v = torch.tensor([-0.5, 0.0, 2.0], requires_grad=True)
    out = ste_sign(v)
    assert out.tolist() == [-1.0, 1.0, 1.0]
    out.sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 1.0]
    v.grad = None
    ste_sign(v, clip=1.0).sum().backward()
    assert v.grad.tolist() == [1.0, 1.0, 0.0]


def test_twin_matches_the_inference_layer_and_trains_only_its_vectors():
    gen = torch.Generator().manual_seed(2)
    s = torch.where(torch.randn(6, 10, generator=gen) >= 0, 1.0, -1.0)
    r, c, b = torch.rand(6, generator=gen), torch.rand(10, generator=gen), torch.randn(6)
    twin = ScaledSignsTwin(s, r, c, bias=b)
    layer = ScaledSignLinear.from_parts(s, r, c, bias=b)
    x = torch.randn(3, 10, generator=gen)
    assert torch.allclose(twin(x), layer(x), atol=1e-2)
    groups = twin.param_groups(0.1)
    assert sum(p.numel() for g in groups for p in g["params"]) == 16
    parts = twin.parts()
    assert torch.equal(parts.signs, s) and torch.allclose(parts.row, r) and parts.finite()
