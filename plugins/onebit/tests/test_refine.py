"""The calibration-aware refinement against plain least squares written here."""

from __future__ import annotations

import torch

from onecomp_onebit import svid
from onecomp_onebit.refine import hessian_signs, refit_scales


def _problem(p: int = 12, m: int = 10, n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(p, m, generator=g) * torch.exp(0.5 * torch.randn(1, m, generator=g))
    x = torch.randn(n, m, generator=g) * torch.exp(torch.randn(1, m, generator=g))
    return w.double(), x.double(), (2 / n) * x.t() @ x


def _output_error(w, w_hat, x) -> float:
    return float((x @ (w - w_hat).t()).pow(2).sum())


def test_scales_are_the_least_squares_solution():
    w, x, h = _problem()
    fit = svid(w.float(), use_balancing=False)
    s = fit.signs.double()
    a1, b1 = refit_scales(w, s, fit.a, fit.b, h, rounds=1, damp=1e-12)
    # a given the initial b: per row, min ‖X(w_i − a_i z_i)‖² with z_i = s_i ⊙ b
    for i in range(w.shape[0]):
        z = x @ (s[i] * fit.b.double())
        expected = (z @ (x @ w[i])) / (z @ z)
        assert torch.isclose(a1[i].double(), expected, rtol=1e-4)
    # b given that a: one stacked least-squares problem over all rows
    design = torch.cat([x * (a1.double()[i] * s[i])[None, :] for i in range(w.shape[0])])
    target = torch.cat([x @ w[i] for i in range(w.shape[0])])
    expected_b = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
    assert torch.allclose(b1.double(), expected_b, rtol=1e-3, atol=1e-6)


def test_with_an_isotropic_h_the_signs_are_the_signs_of_w():
    w, _, _ = _problem(seed=1)
    fit = svid(w.float(), use_balancing=False)
    signs = hessian_signs(w, fit.a, fit.b, torch.eye(w.shape[1]) * 3.0)
    assert torch.equal(signs, torch.where(w >= 0, 1.0, -1.0).float())


def test_refined_signs_and_scales_lower_the_output_error():
    w, x, h = _problem(p=32, m=24, seed=2)
    fit = svid(w.float())
    plain = _output_error(w, fit.weight().double(), x)
    a, b = refit_scales(w, fit.signs, fit.a, fit.b, h)
    scaled = _output_error(w, (a[:, None] * fit.signs * b[None, :]).double(), x)
    signs = hessian_signs(w, fit.a, fit.b, h)
    a2, b2 = refit_scales(w, signs, fit.a, fit.b, h)
    both = _output_error(w, (a2[:, None] * signs * b2[None, :]).double(), x)
    assert scaled < 0.7 * plain and both < scaled
