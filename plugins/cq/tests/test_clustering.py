"""CQ's math against straightforward computations written here, and the reference's two defects."""

from __future__ import annotations

import pytest
import torch

from onecomp_cq.clustering import cluster_matrix, level_means, refit_levels, two_means


def brute_force(row: list[float], weights: list[float]) -> float:
    """The least weighted SSE of any two-level approximation: every threshold between values."""
    best = float("inf")
    for tau in sorted(set(row))[:-1] or row[:1]:
        parts = [[i for i, v in enumerate(row) if (v > tau) == up] for up in (False, True)]
        sse = 0.0
        for part in parts:
            if not part:
                continue
            wsum = sum(weights[i] for i in part)
            mean = sum(weights[i] * row[i] for i in part) / wsum
            sse += sum(weights[i] * (row[i] - mean) ** 2 for i in part)
        best = min(best, sse)
    return best


def weighted_sse(v: torch.Tensor, d: torch.Tensor, codes, left, right) -> torch.Tensor:
    approx = torch.where(codes, right[:, None], left[:, None])
    return (d * (v.double() - approx) ** 2).sum(1)


@pytest.mark.parametrize("weighted", [False, True])
def test_two_means_is_the_exact_optimum_per_row(weighted):
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    v[0, :4] = v[0, 4]  # a row with a tie run
    d = torch.rand(9, generator=gen, dtype=torch.float64) + 0.1 if weighted else torch.ones(9)
    codes, left, right = two_means(v, d if weighted else None)
    got = weighted_sse(v, d.double().expand_as(v), codes, left, right)
    for i in range(6):
        assert got[i].item() == pytest.approx(brute_force(v[i].tolist(), d.tolist()), rel=1e-9)
    assert torch.all(left <= right)


def test_levels_are_the_means_of_what_they_hold_with_ties():
    """Reference defect (a): ties past the split went to the wrong cluster, so a stored mean
    was not the mean of its cluster. fp16 weights near an offset have long tie runs."""
    gen = torch.Generator().manual_seed(0)
    v = (1 + 0.01 * torch.randn(1, 5000, generator=gen)).half().float()
    ref_codes, ref_left, ref_right = reference_cq(v[0])
    held = v[0][~ref_codes].double().mean().item()
    assert abs(held - ref_left) > 1e-6  # the old behaviour fails this test
    codes, left, right = two_means(v)
    assert left.item() == pytest.approx(v[0][~codes[0]].double().mean().item(), rel=1e-12)
    assert right.item() == pytest.approx(v[0][codes[0]].double().mean().item(), rel=1e-12)
    # ties never straddle the clusters
    assert v[0][~codes[0]].max() < v[0][codes[0]].min()


def test_whole_matrix_sums_in_float64():
    """Reference defect (b): float32 prefix sums over a whole matrix cancel in T − S²/k and pick
    a split ~1 % worse than the optimum (distinct values, no ties involved)."""
    gen = torch.Generator().manual_seed(0)
    v = torch.unique((3 + 0.01 * torch.randn(20000, generator=gen, dtype=torch.float64)).float())
    v = v[torch.randperm(v.numel(), generator=gen)][:18600].view(120, 155)
    flat = v.reshape(-1).double()
    ref_codes, _, _ = reference_cq(v.reshape(-1))
    ref_sse = sum(flat[m].var(unbiased=False) * m.sum() for m in (ref_codes, ~ref_codes))
    codes, left, right = cluster_matrix(v, each_row=False)
    assert left.shape == (120,) and torch.all(left == left[0])
    ours = weighted_sse(v.reshape(1, -1), torch.ones(1), codes.reshape(1, -1), left[:1], right[:1])
    # the optimum over all sorted splits, by centred (cancellation-free) sums in float64
    s, _ = torch.sort(flat - flat.mean())
    k = torch.arange(1, s.numel(), dtype=torch.float64)
    c1, c2 = torch.cumsum(s, 0)[:-1], torch.cumsum(s * s, 0)[:-1]
    sse = (c2 - c1**2 / k) + ((s * s).sum() - c2 - (s.sum() - c1) ** 2 / (s.numel() - k))
    assert ours.item() == pytest.approx(sse.min().item(), rel=1e-9)
    assert ref_sse.item() > 1.005 * ours.item()  # the old behaviour fails this test


def test_level_means_weighted_and_empty_cluster():
    v = torch.tensor([[1.0, 2.0, 4.0], [5.0, 5.0, 5.0]])
    codes = torch.tensor([[False, False, True], [False, False, False]])
    d = torch.tensor([1.0, 3.0, 1.0])
    left, right = level_means(v, codes, d)
    assert left.tolist() == pytest.approx([(1 + 6) / 4, 5.0])
    assert right.tolist() == pytest.approx([4.0, 5.0])  # empty upper cluster: the lower mean


def test_refit_levels_is_least_squares_in_the_output():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    x = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    codes = torch.rand(5, 7, generator=gen) > 0.5
    codes[:, 0], codes[:, 1] = True, False
    left, right = refit_levels(w, x.t() @ x, codes)
    for i in range(5):
        up = codes[i].double()
        design = torch.stack([x @ (1 - up), x @ up], dim=1)
        sol = torch.linalg.lstsq(design, x @ w[i]).solution
        assert [left[i].item(), right[i].item()] == pytest.approx(sol.tolist(), rel=1e-9)
    # one pair for the whole matrix: the same least squares over every row at once
    left1, right1 = refit_levels(w, x.t() @ x, codes, each_row=False)
    design = torch.cat(
        [torch.stack([x @ (1 - c.double()), x @ c.double()], 1) for c in codes], dim=0
    )
    sol = torch.linalg.lstsq(design, torch.cat([x @ r for r in w])).solution
    assert [left1[0].item(), right1[0].item()] == pytest.approx(sol.tolist(), rel=1e-9)


def reference_cq(v: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The reference's per-vector rule (spec §3): float32 prefix sums over the sorted values,
    split index k* by argmin, τ = v₍ₖ*₎, means from the index split, codes from ``v > τ``."""
    s, _ = torch.sort(v.float())
    m = s.numel()
    c1, c2 = torch.cumsum(s, 0), torch.cumsum(s * s, 0)
    k = torch.arange(1, m, dtype=torch.float32)
    sse = (c2[:-1] - c1[:-1] ** 2 / k) + ((c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]) ** 2 / (m - k))
    best = int(sse.argmin())
    left = (c1[best] / (best + 1)).item()
    right = ((c1[-1] - c1[best]) / (m - best - 1)).item()
    return v > s[best], left, right


def test_brute_force_helper_agrees_on_a_tiny_case():
    # the helper itself: [0, 0, 1, 5] is best split as {0, 0, 1} | {5}
    assert brute_force([0.0, 0.0, 1.0, 5.0], [1.0] * 4) == pytest.approx(2 / 3)
