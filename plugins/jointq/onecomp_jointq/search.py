"""JointQ's two moves on fixed zero points: a code local search per group, a joint scale refit per row.

Row i's objective is f_i(ŵ) = (w_i − ŵ_i) H̃ (w_i − ŵ_i)ᵀ with H̃ the
regularised Hessian; rows are independent, so every function works on a
batch of rows at once (any device). A group t of row i holds ŵ_t = s·z with
integer offsets z = a − zp (a the stored code, zp the fixed zero point).

For fixed z the best scale of one group is s = q/o with q = h·z, o = z R zᵀ
(R = H̃_tt, h the group's correlation with the residual the other groups
leave), and the error falls by θ = q²/o. A move changes one offset by ±1;
its new θ is (q ± h_j)² / (o ± 2 v_j + R_jj) with v = z R, so every move of
every row is scored in one tensor expression.
"""

from __future__ import annotations

import torch

#: a move must raise θ by more than this fraction to count (float64 rounding stays below it)
RELATIVE_GAIN = 1e-12


def local_search(
    z: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    h: torch.Tensor,
    r: torch.Tensor,
    max_moves: int,
) -> torch.Tensor:
    """Greedy ±1 moves on offsets ``z`` (rows, d) within [lo, hi] (rows, 1) maximising q²/o.

    Each step applies, in every row that still has one, the single move that
    raises θ most; a row stops as soon as no move improves it (per-row
    stopping: the other rows go on), all rows after ``max_moves`` steps.
    Returns the new offsets (float, integral values).
    """
    z = z.clone()
    alive = torch.arange(z.shape[0], device=z.device)
    diag = torch.diagonal(r)
    v = z @ r
    o = (v * z).sum(1)
    q = (h * z).sum(1)
    theta = _theta(q, o)
    for _ in range(max_moves):
        if alive.numel() == 0:
            break
        za, va, ha = z[alive], v[alive], h[alive]
        qa, oa = q[alive].unsqueeze(1), o[alive].unsqueeze(1)
        up = _score(qa + ha, oa + 2 * va + diag, za + 1 <= hi[alive])
        down = _score(qa - ha, oa - 2 * va + diag, za - 1 >= lo[alive])
        scores = torch.cat([up, down], dim=1)
        best, idx = scores.max(dim=1)
        th = theta[alive]
        better = best > th + RELATIVE_GAIN * th.abs() + torch.finfo(th.dtype).tiny
        rows, idx, best = alive[better], idx[better], best[better]
        d = z.shape[1]
        cols = idx % d
        step = 1.0 - 2.0 * (idx >= d).to(z.dtype)  # +1 for the first half, −1 for the second
        q[rows] += step * h[rows, cols]
        o[rows] += 2 * step * v[rows, cols] + diag[cols]
        v[rows] += step.unsqueeze(1) * r[cols]
        z[rows, cols] += step
        theta[rows] = best
        alive = rows
    return z


def _theta(q: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    return torch.where(o > 0, q.square() / o.clamp(min=torch.finfo(o.dtype).tiny), 0.0)


def _score(q: torch.Tensor, o: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    ok = valid & (o > 0)
    return torch.where(ok, q.square() / o.clamp(min=torch.finfo(o.dtype).tiny), -torch.inf)


def best_scale(
    z: torch.Tensor, h: torch.Tensor, r: torch.Tensor, old: torch.Tensor
) -> torch.Tensor:
    """Per row s = (h·z)/(z R zᵀ); rows whose offsets are all zero keep ``old``."""
    o = ((z @ r) * z).sum(1)
    q = (h * z).sum(1)
    return torch.where(o > 0, q / o.clamp(min=torch.finfo(o.dtype).tiny), old)


def joint_scales(
    z: torch.Tensor, groups: torch.Tensor, n_groups: int, hr: torch.Tensor, c: torch.Tensor
) -> torch.Tensor | None:
    """All group scales of each row at once: the least-squares solution of M s = r.

    ``z`` (rows, m) offsets in column order, ``groups`` (m,) the group of each
    column, ``hr`` = H̃ (m, m), ``c`` = W H̃ (rows, m). With A = diag(z_i)·E
    (E the column → group indicator), M = Aᵀ H̃ A and r = Aᵀ c_i. Returns
    (rows, groups), or None where a batched solve fails (singular M: a row
    whose offsets are all zero in some group); the caller keeps its scales.
    """
    one_hot = torch.nn.functional.one_hot(groups.long(), n_groups).to(z.dtype)  # (m, g)
    a = z.unsqueeze(2) * one_hot  # (rows, m, g)
    m = a.transpose(1, 2) @ (hr @ a)  # (rows, g, g)
    rhs = (a.transpose(1, 2) @ c.unsqueeze(2)).squeeze(2)  # (rows, g)
    s, info = torch.linalg.solve_ex(m, rhs)
    bad = (info != 0) | ~torch.isfinite(s).all(dim=1)
    if bool(bad.any()):
        s[bad] = torch.nan  # the caller rejects NaN rows
    return s


def row_errors(w: torch.Tensor, w_hat: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """f_i = (w_i − ŵ_i) H̃ (w_i − ŵ_i)ᵀ for every row."""
    delta = w - w_hat
    return ((delta @ hr) * delta).sum(1)
