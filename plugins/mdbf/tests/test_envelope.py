"""The MDBF representation on small matrices, against straightforward computations written here."""

from __future__ import annotations

import pytest
import torch

from onecomp_mdbf.envelope import Path, compose, gauge, mdbf_bits, project, rank_for


@pytest.mark.parametrize(
    ("p", "m", "env", "paths", "expect"),
    [
        (4096, 4096, 1, 1, 2024),
        (4096, 4096, 1, 2, 1004),
        (4096, 4096, 2, 1, 2000),
        (14336, 4096, 1, 1, 3164),
        (14336, 4096, 1, 2, 1574),
        (14336, 4096, 2, 1, 3142),
    ],
)
def test_total_budget_rank_is_the_reference_rule(p, m, env, paths, expect):
    """The spec's examples (s = 16, b = 1)."""
    assert rank_for(p, m, 1.0, env, paths, "total") == expect


def test_signs_budget_rank_is_dbf_rule_and_bits_count_every_tensor():
    r = rank_for(64, 172, 1.5, 2, 1, "signs")
    assert r == round(1.5 * 64 * 172 / (64 + 172))
    assert rank_for(64, 172, 1.5, 2, 2, "signs") == round(1.5 * 64 * 172 / (2 * (64 + 172)))
    stored = r * 64 + r * 172 + 16 * (64 * 2 + 2 * r * 2 + 172 * 2)  # S_A, S_B, A, Q_U, Q_V, B
    assert mdbf_bits(64, 172, r, 2, 1) == pytest.approx(stored / (64 * 172))


def test_l1_one_path_is_dbf():
    """l = 1: (S_A ⊙ a·q_uᵀ)(S_B ⊙ q_v·bᵀ) = diag(a)·S_A·diag(q_u ⊙ q_v)·S_B·diag(b)."""
    g = torch.Generator().manual_seed(0)
    p, r, m = 5, 4, 7
    s_a = torch.where(torch.randn(p, r, generator=g) > 0, 1.0, -1.0)
    s_b = torch.where(torch.randn(r, m, generator=g) > 0, 1.0, -1.0)
    a, qu, qv, b = (torch.rand(n, 1, generator=g) for n in (p, r, r, m))
    path = Path(s_a, a, qu, s_b, qv, b)
    dbf = torch.diag(a[:, 0]) @ s_a @ torch.diag((qu * qv)[:, 0]) @ s_b @ torch.diag(b[:, 0])
    torch.testing.assert_close(compose([path]), dbf)


def test_projection_is_sign_times_the_truncated_svd_of_the_magnitude():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(30, 20, generator=g)
    for env in (1, 2, 3):
        projected, sign, left, right = project(z, env, None)
        u, s, vh = torch.linalg.svd(z.abs())
        expect = torch.where(z >= 0, 1.0, -1.0) * ((u[:, :env] * s[:env]) @ vh[:env])
        torch.testing.assert_close(projected, expect, rtol=1e-4, atol=1e-5)
        assert torch.linalg.matrix_rank(left @ right.t()) == env
    # warm-started subspace iterations (large matrices) converge to the same projection
    big = torch.randn(120, 90, generator=g)
    exact, *_ = project(big, 2, None)
    _, _, _, warm = project(big, 2, None)
    approx = project(big, 2, warm, iters=10)[0]
    torch.testing.assert_close(approx, exact, rtol=1e-3, atol=1e-3)


def test_gauge_keeps_the_weight():
    g = torch.Generator().manual_seed(2)
    s_a = torch.where(torch.randn(6, 3, generator=g) > 0, 1.0, -1.0)
    s_b = torch.where(torch.randn(3, 8, generator=g) > 0, 1.0, -1.0)
    path = Path(s_a, 1e4 * torch.rand(6, 2, generator=g), 1e-4 * torch.rand(3, 2, generator=g),
                s_b, torch.rand(3, 2, generator=g), 1e-3 * torch.rand(8, 2, generator=g))  # fmt: skip
    fixed = gauge(path)
    torch.testing.assert_close(fixed.weight(), path.weight(), rtol=1e-4, atol=1e-9)
    peaks = [float(t.abs().max()) for t in (fixed.env_a, fixed.env_qu, fixed.env_qv, fixed.env_b)]
    assert max(peaks) / min(peaks) < 100
