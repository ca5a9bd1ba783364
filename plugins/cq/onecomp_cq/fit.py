"""One layer's CQ fit: the 2-means start, then (with XᵀX) levels and codes for the output error.

- ``weighting="none"``: the seed's per-row 2-means of the weights;
- ``"diag"``: the same, each column weighted by its input second moment
  diag(XᵀX)_j (the weight error as the diagonal of the output error sees it);
- ``"full"``: from that start, ``code_rounds`` rounds of (codes chosen with
  error feedback through XᵀX, :func:`onecomp_core.kernels.feedback_codes`;
  levels refitted by least squares in XᵀX). The best iterate by output error
  is kept, so a round never makes the layer worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onecomp_core.kernels import feedback_codes

from .clustering import cluster_matrix, dequantize_levels, output_error, refit_levels


@dataclass
class Levels:
    """codes (p, m) bool (True = upper level); left, right (p,) float64."""

    codes: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor

    def weight(self) -> torch.Tensor:
        return dequantize_levels(self.codes, self.left, self.right)


def fit_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    weighting: str,
    each_row: bool = True,
    code_rounds: int = 2,
    damp: float = 0.01,
) -> Levels:
    """CQ's levels and codes for ``weight`` (p, m); ``hessian`` ∝ XᵀX ((m, m)) or its diagonal."""
    diag = None
    if weighting != "none" and hessian is not None:
        diag = hessian.diagonal() if hessian.dim() == 2 else hessian
    best = Levels(*cluster_matrix(weight, diag, each_row))
    if weighting != "full" or hessian is None or hessian.dim() != 2:
        return best
    s = hessian.to(torch.float64)
    best = Levels(best.codes, *refit_levels(weight, s, best.codes, each_row))
    best_error = output_error(weight, best.weight(), s)
    current = best
    for _ in range(code_rounds):
        codes = feedback_codes(weight, s, current.left[:, None], current.right[:, None], damp)
        current = Levels(codes, *refit_levels(weight, s, codes, each_row))
        error = output_error(weight, current.weight(), s)
        if error < best_error:
            best, best_error = current, error
    return best
