"""The per-layer fit: budget, reproducibility, weighting, fp16 safety."""

import pytest
import torch

from onecomp_dbf.config import FitSettings
from onecomp_dbf.factorization import factorize
from onecomp_dbf.factors import binary_bits, middle_dim, total_bits
from onecomp_dbf.objective import (
    activation_scales,
    gradient_scales,
    input_correlation,
    sinkhorn_balance,
)

FAST = FitSettings(iters=25, use_balancing=False, use_adaptive_rho=False)


def test_k_formula_nearest_and_unclamped():
    assert middle_dim(64, 64, 1.5) == 48  # 1.5·4096/128
    assert middle_dim(172, 64, 1.5) == 70  # 69.97 → nearest, not floor (69 is 1.4% short)
    assert middle_dim(32, 64, 2.0) == 43  # 42.67
    assert middle_dim(14336, 4096, 2.0) == 6372  # no silent cap at min(n, m) = 4096
    assert middle_dim(14336, 4096, 2.0, clamp=True) == 4096
    assert middle_dim(4, 4, 0.01) == 1


@pytest.mark.parametrize(
    "shape,bits",
    [(s, b) for s in [(64, 64), (172, 64), (64, 172), (32, 64)] for b in (1.5, 2.0)]
    + [((4096, 11008), b) for b in (1.0, 1.25, 1.5, 2.0, 3.0)],
)
def test_binary_bits_within_one_percent(shape, bits):
    """Every stories260K shape at 1.5 and 2 bits, and a 7B MLP shape at any bits."""
    k = middle_dim(*shape, bits)
    assert abs(binary_bits(*shape, k) / bits - 1) < 0.01
    n, m = shape
    assert total_bits(n, m, k) == pytest.approx(binary_bits(n, m, k) + 16 * (n + m + k) / (n * m))


def _layer(n=48, m=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=gen) * torch.exp(0.5 * torch.randn(1, m, generator=gen))


def test_same_seed_same_result_whatever_the_global_rng():
    w = _layer()
    torch.manual_seed(1)
    f1 = factorize(w, 30, FAST)
    torch.manual_seed(999)
    torch.rand(100)
    f2 = factorize(w, 30, FAST)
    assert torch.equal(f1.weight(), f2.weight())
    other = factorize(
        w, 30, FitSettings(iters=25, use_balancing=False, use_adaptive_rho=False, seed=7)
    )
    assert not torch.equal(f1.weight(), other.weight())


def test_fit_is_structured_and_accurate():
    w = _layer()
    f = factorize(w, 30, FAST)
    assert set(f.sign_a.unique().tolist()) <= {-1.0, 1.0}
    assert set(f.sign_b.unique().tolist()) <= {-1.0, 1.0}
    assert f.sign_a.shape == (48, 30) and f.sign_b.shape == (30, 40)
    rel = (w - f.weight()).pow(2).sum() / w.pow(2).sum()
    assert rel < 0.25  # 1.45 bits per weight on a Gaussian (rate-distortion bound 0.13)
    # more middle dimension, better fit
    f_big = factorize(w, 60, FAST)
    assert (w - f_big.weight()).pow(2).sum() < (w - f.weight()).pow(2).sum()


@pytest.mark.parametrize(
    "settings",
    [
        FitSettings(iters=10, use_balancing=True, balance_mode="l1", use_adaptive_rho=True),
        FitSettings(iters=10, use_balancing=True, balance_mode="l2", use_adaptive_rho=True),
    ],
)
def test_all_modes_run(settings):
    w = _layer()
    rel = (w - factorize(w, 30, settings).weight()).pow(2).sum() / w.pow(2).sum()
    assert rel < 0.5


def test_activation_weighting_beats_unweighted_on_outlier_channel():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(64, 64, generator=gen)
    x = torch.randn(2048, 64, generator=gen)
    x[:, 5] *= 30.0  # one outlier input channel
    h = 2 * x.t() @ x / x.shape[0]

    def out_err(f):
        return ((x @ (w - f.weight()).t()).pow(2).sum() / (x @ w.t()).pow(2).sum()).item()

    weighted = factorize(w, 48, FAST, col_scale=activation_scales(h.diagonal(), 64))
    plain = factorize(w, 48, FAST)
    assert out_err(weighted) < 0.5 * out_err(plain)


def test_full_hessian_objective_beats_diagonal_on_correlated_inputs():
    """The Sylvester ADMM uses H's off-diagonal; the diagonal fit cannot."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(64, 48, generator=gen)
    mix = torch.eye(48) + 0.4 * torch.randn(48, 48, generator=gen)
    x = torch.randn(4096, 48, generator=gen) @ mix
    h = 2 * x.t() @ x / x.shape[0]
    s = activation_scales(h.diagonal(), 48)

    def out_err(f):
        return ((x @ (w - f.weight()).t()).pow(2).sum() / (x @ w.t()).pow(2).sum()).item()

    diagonal = factorize(w, 36, FAST, col_scale=s)
    full = factorize(w, 36, FAST, col_scale=s, correlation=input_correlation(h, s, 0.01))
    assert out_err(full) < 0.8 * out_err(diagonal)
    # C = I is the diagonal objective (a few iterations: later, rounding noise flips signs)
    short = FitSettings(iters=5, use_balancing=False, use_adaptive_rho=False)
    same = factorize(w, 36, short, col_scale=s, correlation=torch.eye(48))
    torch.testing.assert_close(same.weight(), factorize(w, 36, short, col_scale=s).weight())


def test_input_correlation_unit_diagonal_and_damped():
    x = torch.randn(512, 8) * torch.arange(1, 9)
    h = 2 * x.t() @ x / 512
    c = input_correlation(h, activation_scales(h.diagonal(), 8), 0.25)
    torch.testing.assert_close(c.diagonal(), torch.ones(8))
    assert c.abs().max() <= 1 + 1e-6 and torch.equal(c, c.t())


def test_vectors_fit_fp16_for_tiny_and_huge_weights():
    for scale in (1e-6, 1e4):
        f = factorize(_layer() * scale, 30, FAST)
        for v in (f.a, f.c, f.b):
            assert torch.isfinite(v.half()).all()
        rel = (f.weight() - _layer() * scale).norm() / (_layer() * scale).norm()
        deq = (f.a.half().float()[:, None] * f.sign_a * f.c.half().float()) @ (
            f.sign_b * f.b.half().float()
        )
        assert ((deq - f.weight()).norm() / f.weight().norm()) < 1e-2
        assert rel < 0.5


def test_sinkhorn_reaches_targets():
    w = _layer(30, 20)
    u, v = sinkhorn_balance(w, 200, 1.0, "l1", tol=1e-4)
    b = (u[:, None] * w * v[None, :]).abs()
    assert torch.allclose(b.sum(1), torch.ones(30), rtol=1e-3)
    assert torch.allclose(b.sum(0), torch.full((20,), 30 / 20), rtol=1e-3)


def test_activation_scales_floor_dead_channels():
    s = activation_scales(torch.tensor([2.0, 0.0, 8.0]), 3)
    assert s[0] == pytest.approx(1.0) and s[2] == pytest.approx(2.0)
    assert s[1] > 0
    assert torch.equal(activation_scales(None, 4), torch.ones(4))


def test_gradient_scales_are_root_moments_with_a_floor():
    r = gradient_scales(torch.tensor([4.0, 0.0, 16.0], dtype=torch.float64))
    assert r.dtype == torch.float32
    assert r[0] == pytest.approx(2.0) and r[2] == pytest.approx(4.0)
    assert r[1] == pytest.approx(2e-3)  # 1e-3 of the mean scale


def test_fit_settings_defaults_are_dbfs():
    """One set of defaults: the fit's knobs default to DBF's own parameters."""
    from onecomp_dbf import DBF

    dbf = DBF()
    assert all(getattr(FitSettings(), k) == getattr(dbf, k) for k in FitSettings.parameters())
