"""OneBit's layer-wise math against straightforward computations written here."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import ScaledSignLinear, pack_signs
from onecomp_onebit import Onebit, OneBitResult, sinkhorn_balance, svid
from onecomp_onebit.result import onebit_bits


def _matrix(p: int = 48, m: int = 80, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed entries with log-normal row and column scales (like the spec's §11 matrix)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(p, m, generator=g) / torch.rand(p, m, generator=g).clamp_min(0.05).sqrt()
    w *= torch.exp(0.3 * torch.randn(p, 1, generator=g)) * torch.exp(
        0.3 * torch.randn(1, m, generator=g)
    )
    return 0.01 * w


def _rel(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w - w_hat).pow(2).sum() / w.pow(2).sum())


def _best_rank1(a: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(a.double())
    return (s[0] * torch.outer(u[:, 0], vh[0])).abs().float()


def test_without_balancing_the_magnitudes_are_the_best_rank1_of_abs_w():
    w = _matrix()
    fit = svid(w, use_balancing=False)
    assert torch.equal(fit.signs, torch.where(w >= 0, 1.0, -1.0))
    assert torch.allclose(torch.outer(fit.a, fit.b), _best_rank1(w.abs()), rtol=1e-4, atol=1e-9)
    assert fit.a.min() >= 0 and fit.b.min() >= 0
    assert float(fit.a.norm()) == pytest.approx(float(fit.b.norm()), rel=1e-5)


def test_balancing_reaches_its_row_and_column_sums():
    w = _matrix()
    d_r, d_c = sinkhorn_balance(w, iters=500, alpha=2.0)
    balanced = d_r[:, None] * w.abs() * d_c[None, :]
    assert torch.allclose(balanced.sum(1), torch.full((48,), 2.0), rtol=1e-3)
    assert torch.allclose(balanced.sum(0), torch.full((80,), 2.0 * 48 / 80), rtol=1e-3)


def test_balanced_fit_is_folded_back_into_a_and_b():
    """Ŵ = D_r⁻¹ (rank-1 of D_r|W|D_c ⊙ S) D_c⁻¹, computed here step by step."""
    w = _matrix(seed=1)
    d_r, d_c = torch.ones(48, dtype=torch.float64), torch.ones(80, dtype=torch.float64)
    absw = w.abs().double()
    for _ in range(400):  # plain Sinkhorn to convergence
        d_r = d_r / (absw * d_r[:, None] * d_c[None, :]).sum(1)
        d_c = d_c * (48 / 80) / (absw * d_r[:, None] * d_c[None, :]).sum(0)
    magnitudes = _best_rank1((d_r[:, None] * absw * d_c[None, :]).float())
    expected = magnitudes * torch.sign(w) / (d_r[:, None] * d_c[None, :]).float()
    fit = svid(w, use_balancing=True, balance_iters=400)
    assert torch.allclose(fit.weight(), expected, rtol=2e-3, atol=1e-7)


def test_the_stored_scales_reproduce_the_balanced_fit_unlike_the_reference():
    """The reference stored the balanced-space a, b: relative error ~0.93 instead of ~0.5."""
    w = _matrix(128, 256, seed=2)
    layer = torch.nn.Linear(256, 128, bias=False)
    layer.weight.data = w
    result = Onebit(finetune_steps=0).quantize_layer(layer)
    stored = result.dequantize().float()  # from (a, sign, b) alone
    assert _rel(w, stored) < 0.6
    d_r, d_c = sinkhorn_balance(w)
    unfolded = stored * d_r[:, None] * d_c[None, :]  # what the reference's a, b describe
    assert _rel(w, unfolded) > 0.8
    sign_mean = w.abs().mean(1, keepdim=True) * torch.sign(w)
    assert _rel(w, stored) < _rel(w, sign_mean)  # SVID beats sign·row-mean


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (13, 7), (31, 9)])
def test_result_and_packed_layer_round_trip_on_odd_shapes(shape):
    p, m = shape
    g = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(m, p, bias=True)
    layer.weight.data = torch.randn(p, m, generator=g)
    result = Onebit(finetune_steps=0).quantize_layer(layer)
    assert isinstance(result, OneBitResult) and result.sign.numel() == -(-p * m // 8)
    assert torch.equal(result.signs(), torch.where(layer.weight >= 0, 1.0, -1.0))
    packed = Onebit().inference_layer(result, layer)
    assert isinstance(packed, ScaledSignLinear)
    assert torch.allclose(packed.dequantize(), result.dequantize().float(), rtol=1e-3, atol=1e-3)
    empty = Onebit.empty_layer(result.row(p, m, True))
    empty.load_state_dict(packed.state_dict())
    x = torch.randn(2, m, generator=g)
    assert torch.equal(empty(x), packed(x))
    expected = x @ result.dequantize().float().t() + layer.bias.detach().half().float()
    assert torch.allclose(packed(x), expected, rtol=1e-3, atol=1e-3)


def test_effective_bits_are_the_formula():
    assert onebit_bits(4096, 4096) == pytest.approx(1.0078125)
    result = OneBitResult(a=torch.ones(64), sign=pack_signs(torch.ones(64, 172)), b=torch.ones(172))
    assert result.row(64, 172, False)["effective_bits"] == pytest.approx(
        1 + 16 * (64 + 172) / (64 * 172), abs=1e-6
    )
    assert Onebit().bits_for((64, 172)) == pytest.approx(1 + 16 * (64 + 172) / (64 * 172))
