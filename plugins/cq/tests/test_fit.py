"""One layer's CQ fit: each weighting lowers the error it is meant to lower."""

from __future__ import annotations

import pytest
import torch

from onecomp_cq.clustering import cluster_matrix, dequantize_levels, output_error
from onecomp_cq.fit import fit_layer


def _layer(p=12, m=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(p, m, generator=gen) * torch.exp(0.5 * torch.randn(1, m, generator=gen))
    x = torch.randn(300, m, generator=gen) * torch.exp(torch.randn(1, m, generator=gen))
    x[:, 1] += x[:, 0]
    return w, 2 * x.t() @ x / 300


@pytest.mark.parametrize("each_row", [True, False])
def test_full_weighting_lowers_the_output_error(each_row):
    w, h = _layer()
    errors = {
        weighting: output_error(w, fit_layer(w, h, weighting, each_row).weight(), h)
        for weighting in ("none", "diag", "full")
    }
    assert errors["full"] < errors["diag"] and errors["full"] < errors["none"]
    if each_row:
        assert errors["full"] < 0.8 * errors["none"]
    one_round = output_error(w, fit_layer(w, h, "full", each_row, code_rounds=0).weight(), h)
    assert errors["full"] <= one_round  # the feedback rounds never make it worse


def test_diag_weighting_minimises_the_weighted_weight_error():
    w, h = _layer(seed=1)
    d = h.diagonal().double()
    fit = fit_layer(w, h, "diag")
    plain = cluster_matrix(w)  # the unweighted fit, for comparison

    def err(approx: torch.Tensor) -> float:
        return float((d * (w.double() - approx) ** 2).sum())

    assert err(fit.weight()) < err(dequantize_levels(*plain))
    assert not torch.equal(fit.codes, plain[0])


def test_without_statistics_the_fit_is_data_free():
    w, _ = _layer(seed=2)
    fit = fit_layer(w, None, "full")
    codes, left, right = cluster_matrix(w)
    assert torch.equal(fit.codes, codes) and torch.equal(fit.left, left)
