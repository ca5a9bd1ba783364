"""The weighted objective of the fit: input scales, input correlation, row/column balancing.

The fit minimises ‖diag(r)·(W − Ŵ)·diag(s)·L‖² where s_j = sqrt(mean x_j²)
are the input activation scales, r optional output-gradient scales and
C = L·Lᵀ the input correlation in the weighted coordinates (C = I: the
diagonal approximation of the layer's output error). Sinkhorn balancing is
an optional preconditioner whose scales the fit undoes exactly.
"""

from __future__ import annotations

import torch

_EPS = 1e-12
#: rows (or tile side) of the in-place (in × in) steps
BLOCK = 512


def activation_scales(hessian_diag: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """s_j = sqrt(mean x_j²) from diag(H) (H = 2XᵀX/N); ones when there are no statistics.

    Dead channels are floored at 1e-3 of the mean scale, so undoing the
    weighting cannot blow a vector entry up.
    """
    if hessian_diag is None:
        return torch.ones(in_features)
    s = (hessian_diag.float().clamp_min(0) / 2).sqrt()
    floor = 1e-3 * s.mean().clamp_min(_EPS)
    return s.clamp_min(floor)


def gradient_scales(moments: torch.Tensor) -> torch.Tensor:
    """r_i = sqrt(mean g_i²) from the output-gradient moments b (out,), floored like s."""
    row = moments.float().cpu().clamp_min(0).sqrt()
    return row.clamp_min(1e-3 * row.mean().clamp_min(_EPS))


def input_correlation(hessian: torch.Tensor, col_scale: torch.Tensor, damp: float) -> torch.Tensor:
    """C = (1−λ)·D⁻¹(H/2)D⁻¹ + λ·I with D = diag(s): the Hessian in the weighted coordinates.

    Its diagonal is one where s is not floored, so C = I recovers the
    diagonal objective; ``damp`` λ pulls it towards I (noise in H). Built in
    one new (in × in) matrix, every step in place and in row blocks (no
    identity, no transposed copy): a 5632-wide layer's solve holds fewer
    127 MB temporaries, with the same bits as the whole-matrix expressions.
    """
    s = col_scale.float().to(hessian.device)
    corr = hessian.detach().float() / 2  # on H's device: a GPU builds it there
    divide_outer_(corr, s)
    symmetrize_(corr)
    corr.mul_(1 - damp)
    corr.diagonal().add_(damp)
    return corr


def divide_outer_(matrix: torch.Tensor, s: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """matrix / (s sᵀ) in place, ``block`` rows at a time (the same quotients, no (m × m) outer)."""
    for start in range(0, matrix.shape[0], block):
        rows = slice(start, start + block)
        matrix[rows].div_(s[rows, None] * s[None, :])
    return matrix


def symmetrize_(matrix: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """(M + Mᵀ)/2 in place, one pair of (block × block) tiles at a time (a + b = b + a exactly)."""
    size = matrix.shape[0]
    for i in range(0, size, block):
        for j in range(i, size, block):
            upper = matrix[i : i + block, j : j + block]
            lower = matrix[j : j + block, i : i + block]
            mean = (upper + lower.t()) / 2
            upper.copy_(mean)
            lower.copy_(mean.t())
    return matrix


def sinkhorn_balance(
    target: torch.Tensor, iters: int, alpha: float, mode: str, tol: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column scales (u, v) so diag(u)·|T|·diag(v) has row sums α and column sums nα/m.

    ``mode`` "l2" balances squared norms instead of sums. Alternating updates
    with a gauge fix (equal geometric means), stopping once both sides are
    within ``tol`` of their targets.
    """
    n, m = target.shape
    power = 1 if mode == "l1" else 2
    mag = target.abs().pow(power)
    row_target, col_target = alpha, n * alpha / m
    log_u = torch.zeros(n, device=target.device)
    log_v = torch.zeros(m, device=target.device)
    for _ in range(iters):
        rows = (mag * (power * log_v).exp()[None, :]).sum(1) * (power * log_u).exp()
        log_u += (row_target / rows.clamp_min(_EPS)).log() / power
        cols = (mag * (power * log_u).exp()[:, None]).sum(0) * (power * log_v).exp()
        log_v += (col_target / cols.clamp_min(_EPS)).log() / power
        shift = (log_u.mean() - log_v.mean()) / 2
        log_u -= shift
        log_v += shift
        scaled = mag * (power * log_u).exp()[:, None] * (power * log_v).exp()[None, :]
        row_err = (scaled.sum(1) / row_target - 1).abs().max()
        col_err = (scaled.sum(0) / col_target - 1).abs().max()
        if row_err < tol and col_err < tol:
            break
    return log_u.exp(), log_v.exp()
