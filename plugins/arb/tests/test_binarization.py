"""ARB's math against straightforward computations written here, and the reference's split defect."""

from __future__ import annotations

import pytest
import torch

from onecomp_arb.binarization import (
    arb,
    arb_rc,
    arb_split,
    arb_x,
    compose,
    joint_alpha_mu,
    split_mu,
)


def _w(p=6, m=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(p, m, generator=gen, dtype=torch.float64) + 0.3


def plain_arb(w: torch.Tensor, iters: int, mu0: list[float] | None = None):
    """Spec §4 steps 1–3, row by row with Python lists."""
    alphas, signs, mus = [], [], []
    for i, row in enumerate(w.tolist()):
        m = len(row)
        mu = sum(row) / m if mu0 is None else mu0[i]
        for _ in range(iters):
            b = [1.0 if v - mu >= 0 else -1.0 for v in row]
            alpha = max(sum(bj * (v - mu) for bj, v in zip(b, row, strict=True)) / m, 1e-8)
            mu += sum(v - alpha * bj - mu for bj, v in zip(b, row, strict=True)) / m
        b = [1.0 if v - mu >= 0 else -1.0 for v in row]
        alphas.append(max(sum(abs(v - mu) for v in row) / m, 1e-8))
        signs.append(b)
        mus.append(mu)
    f64 = torch.float64
    return (
        torch.tensor(alphas, dtype=f64),
        torch.tensor(signs, dtype=f64),
        torch.tensor(mus, dtype=f64),
    )


def test_arb_follows_the_spec_steps():
    w = _w()
    alpha, b, mu = arb(w, 7)
    ref = plain_arb(w, 7)
    for got, want in zip((alpha, b, mu), ref, strict=True):
        torch.testing.assert_close(got, want.double(), rtol=1e-12, atol=1e-12)


def plain_split_mu(w: torch.Tensor, iters: int, groups: int) -> list[float]:
    """The split walk (spec §4), written with explicit loops over rows and entries."""
    p, m = w.shape
    mu = w.mean(1)
    imp = (w - mu[:, None]).abs()
    edges = [
        0.0,
        *torch.quantile(imp.reshape(-1), torch.linspace(0, 1, groups + 1)[1:-1].double()).tolist(),
        float("inf"),
    ]
    mus = mu.tolist()
    for g in range(groups):
        for _ in range(max(1, iters // groups)):
            for i in range(p):
                inside = [
                    j
                    for j in range(m)
                    if edges[g] < imp[i, j] <= edges[g + 1] or (g == 0 and imp[i, j] == 0)
                ]
                if not inside:
                    continue
                c = [w[i, j].item() - mus[i] for j in inside]
                alpha = max(sum(abs(v) for v in c) / len(inside), 1e-8)
                mus[i] += sum(v - alpha * (1 if v >= 0 else -1) for v in c) / m
    return mus


def test_split_mode_keeps_its_refinement():
    """Reference defect: with split_points > 1 the walk's μ was discarded and the result was plain
    ARB from the row mean with iters // 3 iterations. Here the walk's μ seeds that alternation."""
    w = _w(8, 12, seed=3)
    w[:, :3] *= 4  # a few large weights, so the groups differ
    iters = 3  # one final iteration: the seed of μ shows in the result
    walked = plain_split_mu(w, iters, 2)
    torch.testing.assert_close(split_mu(w, iters, 2), torch.tensor(walked, dtype=torch.float64))
    alpha, b, mu = arb_split(w, iters, 2)
    want = plain_arb(w, 1, mu0=walked)
    for got, expected in zip((alpha, b, mu), want, strict=True):
        torch.testing.assert_close(got, expected.double(), rtol=1e-12, atol=1e-12)
    discarded = plain_arb(w, 1)  # what the reference returned
    assert not torch.allclose(mu, discarded[2].double())
    assert torch.equal(arb_split(w, 15, 1)[1], arb(w, 15)[1])  # 1 = plain ARB


def test_arb_x_closed_forms():
    gen = torch.Generator().manual_seed(4)
    w = _w(5, 8, seed=4)
    x = torch.randn(50, 8, generator=gen, dtype=torch.float64) * torch.linspace(0.3, 2, 8)
    s = x.t() @ x
    alpha, b, mu = arb_x(w, s, 1)
    # one iteration from the data-free start (μ row mean, α mean |W − μ|, B = sign(W − μ))
    a0, b0, mu0 = plain_arb(w, 0)
    one = torch.ones(8, dtype=torch.float64)
    for i in range(5):
        mu_i = ((w[i] - a0[i] * b0[i]) @ s @ one / (one @ s @ one)).item()
        b_i = torch.where(w[i] - mu_i >= 0, 1.0, -1.0).double()
        a_i = (b_i @ s @ (w[i] - mu_i)) / (b_i @ s @ b_i)
        assert mu[i].item() == pytest.approx(mu_i, rel=1e-10)
        assert torch.equal(b[i], b_i)
        assert alpha[i].item() == pytest.approx(a_i.item(), rel=1e-10)
    # fixed signs: α and μ jointly, by least squares on the outputs
    a2, m2 = joint_alpha_mu(w, s, b)
    for i in range(5):
        design = torch.stack([x @ b[i], x @ one], 1)
        sol = torch.linalg.lstsq(design, x @ w[i]).solution
        assert [a2[i].item(), m2[i].item()] == pytest.approx(sol.tolist(), rel=1e-9)


def test_arb_rc_data_free_is_the_rank_one_fit_of_the_magnitudes():
    w = _w(7, 9, seed=5)
    row, b, col = arb_rc(w, 200)
    assert torch.equal(b, torch.where(w >= 0, 1.0, -1.0).double())
    u, sv, vh = torch.linalg.svd(w.abs())
    torch.testing.assert_close(
        compose(row, b, None, col), b * (sv[0] * torch.outer(u[:, 0], vh[0]))
    )


def test_arb_rc_with_moments_is_alternating_least_squares_on_the_outputs():
    gen = torch.Generator().manual_seed(6)
    w = _w(4, 6, seed=6)
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    s = x.t() @ x
    b = torch.where(w >= 0, 1.0, -1.0).double()
    row, _, col = arb_rc(w, 1, s)
    # row step from col = 1, then the column step: both plain least squares on X-projected rows
    row0 = torch.stack(
        [torch.linalg.lstsq((x @ b[i])[:, None], x @ w[i]).solution[0] for i in range(4)]
    )
    torch.testing.assert_close(row, row0)
    design = torch.cat([x * (row0[i] * b[i])[None, :] for i in range(4)])
    col0 = torch.linalg.lstsq(design, torch.cat([x @ w[i] for i in range(4)])).solution
    torch.testing.assert_close(col, col0, rtol=1e-5, atol=1e-8)  # the solve carries a tiny ridge
