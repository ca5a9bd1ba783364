"""The predicted loss increase of a weight change, and the statistics candidates get while planning."""

from __future__ import annotations

import pytest
import torch

from onecomp_autobit.sensitivity import planning_hessian, predicted_error


def test_error_weighting_and_planning_statistics():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    q = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    assert predicted_error(w, q) == 2.0
    assert predicted_error(w, q, a=torch.tensor([1.0, 10.0])) == 11.0
    assert predicted_error(w, q, a=torch.tensor([1.0, 10.0]), b=torch.tensor([2.0, 0.0])) == 20.0
    # a full input factor: Σ_i b_i Δ_i A Δ_iᵀ; with a diagonal A it is the diagonal formula
    xtx = torch.tensor([[1.0, 0.5], [0.5, 10.0]])
    d = w - q
    expected = 2.0 * float(d[0] @ xtx @ d[0]) + 0.0 * float(d[1] @ xtx @ d[1])
    assert predicted_error(w, q, b=torch.tensor([2.0, 0.0]), xtx=xtx) == expected
    assert predicted_error(w, q, xtx=torch.diag(torch.tensor([1.0, 10.0]))) == 11.0
    # full output factor too (K-FAC): tr(B·Δ·A·Δᵀ); b is then not used
    gtg = torch.tensor([[2.0, 0.7], [0.7, 1.0]])
    kfac = float(torch.trace(gtg.double() @ d.double() @ xtx.double() @ d.double().t()))
    assert predicted_error(w, q, b=torch.tensor([9.0, 9.0]), xtx=xtx, gtg=gtg) == pytest.approx(
        kfac
    )
    diagonal = predicted_error(w, q, b=torch.tensor([2.0, 1.0]), xtx=xtx)
    assert predicted_error(
        w, q, xtx=xtx, gtg=torch.diag(torch.tensor([2.0, 1.0]))
    ) == pytest.approx(diagonal)
    assert kfac != pytest.approx(diagonal)  # the off-diagonal of B counts
    a = torch.tensor([0.5, 2.0])
    assert torch.equal(planning_hessian("full", a, 2, xtx), 2 * xtx)
    assert torch.equal(planning_hessian("full", a, 2), torch.diag(torch.tensor([1.0, 4.0])))
    assert torch.equal(planning_hessian("diag", None, 2), torch.tensor([2.0, 2.0]))
    assert planning_hessian("none", a, 2) is None
