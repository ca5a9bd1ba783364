"""The batched clipping search picks what a one-candidate-at-a-time search picks."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import grid_params
from onecomp_core.kernels.grid_search import fit_grid, grid_from_range, row_range, shrink_factors


def _loop_search(w, bits, sym, weight, grid, norm):
    best = [(float("inf"), None, None)] * w.shape[0]
    xmin, xmax = row_range(w, sym)
    maxq = (1 << bits) - 1
    for p in shrink_factors(grid).tolist():
        scale, zero = grid_from_range(p * xmin, p * xmax, bits, sym)
        for r in range(w.shape[0]):
            q = torch.clamp(torch.round(w[r] / scale[r]) + zero[r], 0, maxq)
            err = float(((scale[r] * (q - zero[r]) - w[r]).abs().pow(norm) * weight).sum())
            if err < best[r][0]:
                best[r] = (err, scale[r].item(), zero[r].item())
    return torch.tensor([b[1] for b in best]), torch.tensor([b[2] for b in best])


@pytest.mark.parametrize("sym", [True, False])
def test_batched_search_equals_loop(sym: bool) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g)
    w[0] = w[0].abs()  # all-positive row
    w[1, 5] = 8.0  # one outlier: clipping pays off
    weight = torch.rand(40, generator=g) + 0.1
    scale, zero = fit_grid(w, 3, sym, weight, grid=40, norm=2.4)
    ref_scale, ref_zero = _loop_search(w, 3, sym, weight, 40, 2.4)
    assert torch.allclose(scale, ref_scale) and torch.equal(zero, ref_zero)


def test_search_never_worse_than_min_max_and_clips_outlier() -> None:
    w = torch.randn(4, 64)
    w[:, 0] = 20.0
    plain = fit_grid(w, 3, False)
    searched = fit_grid(w, 3, False, grid=100)
    assert torch.all(searched[0] <= plain[0])
    assert torch.any(searched[0] < plain[0])


def test_without_search_matches_core_grid() -> None:
    w = torch.randn(5, 33)
    for sym in (True, False):
        s, z = fit_grid(w, 4, sym)
        cs, cz = grid_params(w, 4, sym)
        assert torch.equal(s, cs) and torch.equal(z, cz)


def test_min_zero_keeps_legacy_v1_zero_points_positive() -> None:
    w = torch.rand(3, 16) + 0.5  # all positive: the asymmetric zero would be 0
    assert torch.all(fit_grid(w, 4, False)[1] == 0)
    assert torch.all(fit_grid(w, 4, False, min_zero=1)[1] == 1)


def test_fixed_row_factors_and_zero_meaning_search() -> None:
    w = torch.randn(4, 32)
    w[:, 0] = 10.0
    shrink = torch.tensor([1.0, 0.5, 0.0, 0.0])
    scale, zero = fit_grid(w, 3, False, grid=50, shrink=shrink)
    assert torch.equal(scale[0], fit_grid(w[:1], 3, False)[0][0])
    half = grid_from_range(*(0.5 * t for t in row_range(w[1:2], False)), 3, False)
    assert torch.equal(scale[1], half[0][0])
    searched = fit_grid(w[2:], 3, False, grid=50)
    assert torch.equal(scale[2:], searched[0]) and torch.equal(zero[2:], searched[1])
