"""JointQ's moves against straightforward computations on small matrices."""

from __future__ import annotations

import torch

from onecomp_jointq.search import best_scale, joint_scales, local_search, row_errors

F64 = torch.float64


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g, dtype=F64)
    return x.t() @ x / (4 * n) + 0.1 * torch.eye(n, dtype=F64)


def _group_gain(z: torch.Tensor, h: torch.Tensor, r: torch.Tensor) -> float:
    """max over s of 2 s h·z − s² z R zᵀ, by evaluating the quadratic at its vertex."""
    o = float(z @ r @ z)
    return float(h @ z) ** 2 / o if o > 0 else 0.0


def _bounds(rows: int, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((rows, 1), lo, dtype=F64), torch.full((rows, 1), hi, dtype=F64)


def test_local_search_ends_where_no_single_move_helps() -> None:
    d, rows = 6, 5
    r = _spd(d, 0)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(rows, d, generator=g, dtype=F64)
    z0 = torch.randint(-4, 4, (rows, d), generator=g).double()
    lo, hi = _bounds(rows, -4, 3)
    z = local_search(z0, lo, hi, h, r, max_moves=1000)
    assert torch.equal(z, z.round()) and bool((z >= -4).all() and (z <= 3).all())
    for i in range(rows):
        gain = _group_gain(z[i], h[i], r)
        assert gain >= _group_gain(z0[i], h[i], r) - 1e-12
        for j in range(d):
            for step in (-1.0, 1.0):
                moved = z[i].clone()
                moved[j] += step
                if -4 <= moved[j] <= 3:
                    assert _group_gain(moved, h[i], r) <= gain * (1 + 1e-9)


def test_each_row_moves_as_if_it_were_alone() -> None:
    """Per-row stopping: a row's result does not depend on the other rows of the batch."""
    d, rows = 8, 7
    r = _spd(d, 2)
    h = torch.randn(rows, d, generator=torch.Generator().manual_seed(3), dtype=F64)
    z0 = torch.zeros(rows, d, dtype=F64)
    z0[:, 0] = 1
    lo, hi = _bounds(rows, -8, 7)
    together = local_search(z0, lo, hi, h, r, max_moves=200)
    for i in range(rows):
        alone = local_search(z0[i : i + 1], lo[:1], hi[:1], h[i : i + 1], r, max_moves=200)
        assert torch.equal(alone[0], together[i])


def test_best_scale_is_the_vertex_of_the_quadratic() -> None:
    r = _spd(5, 4)
    z = torch.tensor([[1.0, -2.0, 0.0, 3.0, 1.0], [0.0] * 5], dtype=F64)
    h = torch.randn(2, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    s = best_scale(z, h, r, old=torch.tensor([7.0, 7.0], dtype=F64))
    grid = torch.linspace(float(s[0]) - 1, float(s[0]) + 1, 2001, dtype=F64)
    values = -2 * grid * (h[0] @ z[0]) + grid**2 * (z[0] @ r @ z[0])
    assert abs(float(grid[values.argmin()]) - float(s[0])) <= 1e-3
    assert float(s[1]) == 7.0  # all-zero offsets keep the old scale


def test_joint_scales_solve_the_least_squares_problem() -> None:
    """Against lstsq on ‖Lᵀ(w − A s)‖² with H̃ = L Lᵀ, groups of unequal size (5, 5, 2)."""
    m, rows = 12, 3
    hr = _spd(m, 5)
    groups = torch.tensor([0] * 5 + [1] * 5 + [2] * 2)
    g = torch.Generator().manual_seed(6)
    w = torch.randn(rows, m, generator=g, dtype=F64)
    z = torch.randint(-3, 4, (rows, m), generator=g).double()
    z[:, [0, 5, 11]] = 2  # no group entirely zero
    s = joint_scales(z, groups, 3, hr, w @ hr)
    lower = torch.linalg.cholesky(hr)
    for i in range(rows):
        a = torch.stack([z[i] * (groups == t) for t in range(3)], dim=1)  # (m, groups)
        expected = torch.linalg.lstsq(lower.t() @ a, lower.t() @ w[i]).solution
        assert torch.allclose(s[i], expected, atol=1e-9)
        w_hat = (a @ s[i]).unsqueeze(0)
        delta = w[i] - w_hat[0]
        assert torch.allclose(row_errors(w[i : i + 1], w_hat, hr)[0], delta @ hr @ delta)
