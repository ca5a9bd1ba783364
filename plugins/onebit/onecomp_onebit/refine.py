"""Calibration-aware refinement of a OneBit layer (an addition to the seed's data-free SVID).

The objective is the layer's output error on the calibration inputs,
tr(ΔW H ΔWᵀ) with H = (2/N)·XᵀX and ΔW = W − diag(a)·S·diag(b):

- :func:`hessian_signs`: choose S column by column with GPTQ-style error
  feedback (Frantar et al. 2022) on the per-element codebook {±a_i b_j}: the
  rounding error of a column is spread over the columns not yet chosen
  through the Cholesky factor of H⁻¹, so later signs compensate it;
- :func:`refit_scales`: for fixed S, the exact least-squares a (one scalar per
  row, closed form) and b (one m × m solve of (H ⊙ Sᵀdiag(a²)S) b = …),
  alternated.
"""

from __future__ import annotations

import torch

#: columns per lazy update of the error feedback
BLOCK = 128


def damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """H in float64 with dead columns made harmless and damp·mean(diag H) added."""
    h = h.double().clone()
    diag = h.diagonal()
    dead = diag <= 0
    diag[dead] = 1.0
    diag += damp * diag.mean()
    return h


def hessian_signs(
    w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, h: torch.Tensor, damp: float = 0.01
) -> torch.Tensor:
    """S (±1, p × m) chosen column by column against the output error (GPTQ-style feedback)."""
    work = w.double().clone()
    p, m = work.shape
    hd = damped(h, damp)
    work[:, h.diagonal() <= 0] = 0
    inv = torch.cholesky_inverse(torch.linalg.cholesky(hd))
    u = torch.linalg.cholesky(inv, upper=True)
    scale = a.double()[:, None] * b.double()[None, :]
    signs = torch.empty(p, m, dtype=torch.float64)
    for start in range(0, m, BLOCK):
        end = min(start + BLOCK, m)
        block = work[:, start:end].clone()
        errors = torch.zeros_like(block)
        for j in range(end - start):
            col = block[:, j]
            s = torch.where(col >= 0, 1.0, -1.0).double()
            signs[:, start + j] = s
            err = (col - s * scale[:, start + j]) / u[start + j, start + j]
            block[:, j:] -= err[:, None] * u[start + j, start + j : end][None, :]
            errors[:, j] = err
        work[:, end:] -= errors @ u[start:end, end:]
    return signs.float()


def refit_scales(
    w: torch.Tensor,
    signs: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    h: torch.Tensor,
    rounds: int = 3,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (a, b) for fixed S under tr(ΔW H ΔWᵀ), ``rounds`` alternations.

    a_i = w_i H z_iᵀ / z_i H z_iᵀ with z_i = s_i ⊙ b; then b solves
    (H ⊙ Sᵀdiag(a²)S) b = Σ_i a_i s_i ⊙ (H w_i) (damped). Non-positive or
    non-finite updates keep the previous values.
    """
    wd, s = w.double(), signs.double()
    hd = damped(h, damp)
    wh = wd @ hd
    a, b = a.double(), b.double()
    for _ in range(rounds):
        z = s * b[None, :]
        new_a = (wh * z).sum(1) / ((z @ hd) * z).sum(1).clamp_min(1e-300)
        a = torch.where(torch.isfinite(new_a) & (new_a > 0), new_a, a)
        gram = hd * (s.t() @ (s * a.pow(2)[:, None]))
        rhs = ((a[:, None] * s) * wh).sum(0)
        gram.diagonal().add_(1e-6 * gram.diagonal().mean())
        new_b = torch.linalg.solve(gram, rhs)
        if bool(torch.isfinite(new_b).all()):
            b = new_b  # a column scale may turn negative: its signs flip with it
    return a.float(), b.float()
