"""The math of QBB on small matrices, against straightforward computations written here."""

from __future__ import annotations

import itertools

import torch

from onecomp_qbb.bases import (
    best_codes,
    compose,
    fit_bases,
    fit_bases_hessian,
    greedy_bases,
    ls_scales,
    progressive_target,
    refine,
)


def _matrix(p: int = 12, m: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(p, m, generator=g, dtype=torch.float64)
    return w * torch.exp(0.5 * torch.randn(1, m, generator=g, dtype=torch.float64))


def _err(w: torch.Tensor, signs: torch.Tensor, scales: torch.Tensor) -> float:
    return float((w - compose(signs, scales)).pow(2).sum())


def test_greedy_start_is_the_reference_rule():
    w = _matrix()
    signs, scales = greedy_bases(w, 2)
    r = w.clone()
    for k in range(2):
        expect_sign = torch.where(r >= 0, 1.0, -1.0).double()
        expect_scale = r.abs().mean(0)
        assert torch.equal(signs[k], expect_sign)
        torch.testing.assert_close(scales[k], expect_scale)
        r = r - expect_sign * expect_scale


def test_least_squares_scales_match_a_per_column_solve():
    w = _matrix()
    signs, _ = greedy_bases(w, 3)
    scales = ls_scales(w, signs)
    for j in range(w.shape[1]):
        design = signs[:, :, j].t()  # (p, N)
        expect = torch.linalg.lstsq(design, w[:, j : j + 1]).solution.reshape(-1)
        torch.testing.assert_close(scales[:, j], expect, rtol=1e-6, atol=1e-8)


def test_best_codes_match_brute_force():
    w = _matrix(p=5, m=4)
    scales = torch.rand(3, 4, dtype=torch.float64) + 0.1
    codes = best_codes(w, scales)
    for i, j in itertools.product(range(5), range(4)):
        best = min(
            itertools.product((-1.0, 1.0), repeat=3),
            key=lambda s: abs(float(w[i, j]) - sum(s[k] * float(scales[k, j]) for k in range(3))),
        )
        assert codes[:, i, j].tolist() == list(best)


def test_refinement_never_raises_the_error_and_flips_signs():
    """Reference defect: its sign latents start at ±1 and move ≤ ~0.1, so no sign ever flips.

    Here the code update changes signs wherever that lowers the error, and the
    result beats the best any fixed-sign scheme can do with the greedy signs
    (those signs with exact least-squares scales).
    """
    w = _matrix(p=40, m=16)
    signs0, _ = greedy_bases(w, 3)
    frozen = _err(w, signs0, ls_scales(w, signs0))
    errors, signs, scales = [], signs0, ls_scales(w, signs0)
    for _ in range(6):
        signs, scales, _ = refine(w, signs, scales, 1)
        errors.append(_err(w, signs, scales))
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:], strict=False))
    assert (signs != signs0).any()
    assert errors[-1] < 0.97 * frozen


def test_exact_scales_beat_the_reference_adam():
    """Reference defect: scales fitted by 1000 Adam steps at lr 1e-4 instead of solved."""
    w = _matrix(p=24, m=10)
    signs, greedy = greedy_bases(w, 3)
    scales = greedy.clone().requires_grad_(True)
    opt = torch.optim.Adam([scales], lr=1e-4)
    for _ in range(1000):
        opt.zero_grad()
        loss = (w - compose(signs, scales)).pow(2).sum()
        loss.backward()
        opt.step()
    exact = ls_scales(w, signs)

    def gradient(a: torch.Tensor) -> float:
        a = a.detach().clone().requires_grad_(True)
        (w - compose(signs, a)).pow(2).sum().backward()
        return float(a.grad.norm() / w.norm())

    assert _err(w, signs, exact) < _err(w, signs, scales.detach())
    assert gradient(exact) < 1e-6  # optimal: the gradient vanishes
    assert gradient(scales) > 1e-2  # Adam's scales are still far from it


def test_more_bases_fit_better_and_four_beat_three():
    w = _matrix(p=64, m=20)
    errs = [_err(w.float(), *fit_bases(w, n, 50)) / float(w.pow(2).sum()) for n in (1, 2, 3, 4)]
    assert errs == sorted(errs, reverse=True)
    assert errs[3] < 0.02


def test_hessian_fit_lowers_the_output_error():
    g = torch.Generator().manual_seed(3)
    w = _matrix(p=32, m=24).float()
    mix = torch.randn(24, 24, generator=g) * 0.5 + torch.eye(24)
    x = torch.randn(512, 24, generator=g) @ mix
    h = 2 * x.t() @ x / 512

    def out_err(approx: torch.Tensor) -> float:
        e = w - approx
        return float(torch.trace(e @ h @ e.t()))

    plain = out_err(compose(*fit_bases(w, 2, 50)))
    aware = out_err(compose(*fit_bases_hessian(w, h, 2, 50, 0.01)))
    assert aware < 0.8 * plain


def test_progressive_target_keeps_the_weights_where_the_reference_zeroes_them():
    """Reference defect: s = max|W|/(2^{b−1} − 1) at b = 2 rounds almost every weight to 0."""
    w = _matrix(p=64, m=32)
    s = w.abs().max() / (2 ** (2 - 1) - 1)
    reference = torch.round(w / s) * s
    ours = progressive_target(w, 2)
    rel = lambda t: float((w - t).pow(2).sum() / w.pow(2).sum())  # noqa: E731
    assert (reference == 0).double().mean() > 0.9
    assert rel(reference) > 0.7
    assert rel(ours) < 0.3
    assert len(torch.unique(ours)) == 4
