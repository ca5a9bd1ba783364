"""One layer's ARB fit for each variant, with optional error-feedback signs.

- "arb": the seed's data-free ARB with its split walk (kept, not discarded);
- "x": ARB-X from that start (μ, α for the output error, B = sign(W − μ));
- "rc": ARB-RC (row and column scales; output error with XᵀX).

For "x" and "rc" with XᵀX, ``sign_rounds`` rounds then choose every sign
with error feedback through XᵀX
(:func:`onecomp_core.kernels.feedback_codes`, the two levels of a
weight being μ_i ± α_i or ±r_i·c_j) and refit the scales for those signs.
The best iterate by output error is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from onecomp_core.kernels import feedback_codes

from .binarization import arb_rc, arb_split, arb_x, compose, joint_alpha_mu


@dataclass
class Binarized:
    """row (p,), signs (p, m) ±1, mu (p,) or None, col (m,) or None; float64."""

    row: torch.Tensor
    signs: torch.Tensor
    mu: torch.Tensor | None = None
    col: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        return compose(self.row, self.signs, self.mu, self.col)

    def levels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) of every weight, broadcastable to (p, m): Ŵ_ij is one of them."""
        if self.col is not None:
            scale = self.row[:, None] * self.col[None, :]
            return -scale, scale
        return (self.mu - self.row)[:, None], (self.mu + self.row)[:, None]


def output_error(weight: torch.Tensor, approx: torch.Tensor, s: torch.Tensor) -> float:
    """tr((W − Ŵ) S (W − Ŵ)ᵀ)."""
    e = weight.to(torch.float64) - approx
    return float(((e @ s) * e).sum())


def fit_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor | None,
    variant: str,
    iters: int = 15,
    split_points: int = 2,
    sign_rounds: int = 2,
    damp: float = 0.01,
) -> Binarized:
    """ARB's scales and signs for ``weight`` (p, m); ``hessian`` ∝ XᵀX (m, m) or None."""
    s = None if hessian is None or hessian.dim() != 2 else hessian.to(torch.float64)
    if variant == "rc":
        row, signs, col = arb_rc(weight, iters, s)
        best = Binarized(row, signs, col=col)
    else:
        alpha, signs, mu = arb_split(weight, iters, split_points)
        if variant == "x" and s is not None:
            alpha, signs, mu = arb_x(weight, s, iters, mu=mu)
        best = Binarized(alpha, signs, mu=mu)
    if s is None or variant == "arb" or sign_rounds == 0:
        return best
    best_error = output_error(weight, best.weight(), s)
    current = best
    for _ in range(sign_rounds):
        low, high = current.levels()
        signs = feedback_codes(weight, s, low, high, damp).to(torch.float64) * 2 - 1
        if variant == "rc":
            row, signs, col = arb_rc(weight, max(iters, 1), s, signs=signs)
            current = Binarized(row, signs, col=col)
        else:
            alpha, mu = joint_alpha_mu(weight.to(torch.float64), s, signs)
            current = Binarized(alpha, signs, mu=mu)
        error = output_error(weight, current.weight(), s)
        if error < best_error:
            best, best_error = current, error
    return best
