"""The error-feedback choice between two levels, against the OBS update written out plainly."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels.two_level import feedback_codes, inverse_factor


def plain_sweep(w, h, lo, hi):
    """Column by column: take the nearer level, then move the columns not yet chosen by the
    optimal-brain-surgeon update with the inverse of H restricted to them (no Cholesky)."""
    w = w.clone()
    m = w.shape[1]
    codes = torch.zeros_like(w, dtype=torch.bool)
    for j in range(m):
        up = (w[:, j] - hi[:, j]).abs() < (w[:, j] - lo[:, j]).abs()
        codes[:, j] = up
        err = w[:, j] - torch.where(up, hi[:, j], lo[:, j])
        inv = torch.linalg.inv(h[j:, j:])
        w[:, j:] -= err[:, None] * (inv[0] / inv[0, 0])[None, :]
    return codes


@pytest.mark.parametrize("block", [128, 3])
def test_matches_the_plain_obs_sweep(block):
    gen = torch.Generator().manual_seed(0)
    p, m = 9, 11
    w = torch.randn(p, m, generator=gen, dtype=torch.float64)
    x = torch.randn(60, m, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, m)
    x[:, 3] += x[:, 2]  # correlated inputs, so the feedback matters
    h = x.t() @ x
    lo = torch.full((p, m), -0.8, dtype=torch.float64) + 0.1 * torch.arange(p)[:, None]
    hi = torch.full((p, m), 0.7, dtype=torch.float64) - 0.05 * torch.arange(m)[None, :]
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(m, dtype=torch.float64)
    got = feedback_codes(w, h, lo, hi, damp=0.01, block=block)
    assert torch.equal(got, plain_sweep(w, damped, lo, hi))
    nearest = (w - hi).abs() < (w - lo).abs()
    assert not torch.equal(got, nearest)  # the feedback changed some choices


def test_uncorrelated_inputs_choose_the_nearer_level():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=gen)
    h = torch.diag(torch.rand(6, generator=gen) + 0.5)
    lo, hi = -torch.ones(4, 1) * 0.5, torch.ones(4, 1) * 0.3
    assert torch.equal(feedback_codes(w, h, lo, hi), (w - hi).abs() < (w - lo).abs())


def test_dead_inputs_and_singular_moments_are_handled():
    h = torch.zeros(4, 4, dtype=torch.float64)
    h[:2, :2] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # singular, two dead inputs
    u = inverse_factor(h)
    assert torch.isfinite(u).all() and torch.all(u.diagonal() > 0)
