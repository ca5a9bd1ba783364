"""Exact two-level (1-D 2-means) clustering of each weight row, optionally weighted.

For one row v with non-negative weights d (``None``: all 1), the two-level
approximation minimising Σ_j d_j (v_j − ŵ_j)² puts the values into two sets
that are contiguous in sorted order, so it is found exactly by scanning every
split of the sorted row with prefix sums of d, d·v and d·v² (the seed's CQ,
with d = diag(XᵀX) when calibration is available). Two of the reference's
defects are fixed here:

- sums are float64 (float32 prefix sums over a whole matrix cancel
  catastrophically in T − S²/W);
- a split may not cut a run of equal values, and the codes are the sorted
  positions themselves, so every value sits in the cluster whose mean was
  computed with it (the reference re-derived the codes from a threshold
  ``v > τ`` and sent ties beyond the split to the wrong cluster). The two
  levels are then recomputed from the final assignment.
"""

from __future__ import annotations

import torch

#: relative floor of a level's weight, so a cluster with zero total weight keeps its plain mean
_TINY = 1e-300


def two_means(
    values: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``values`` (rows, m): (codes bool (rows, m), left (rows,), right (rows,)).

    ``codes`` is True for the upper cluster; ``left`` ≤ ``right`` are the
    (weighted) means of the two clusters, float64. ``weights`` broadcasts to
    ``values`` ((m,) per column, or (rows, m)). A row with a single distinct
    value gets both levels equal to it and all codes False.
    """
    v = values.to(torch.float64)
    rows, m = v.shape
    d = torch.ones_like(v) if weights is None else weights.to(torch.float64).expand_as(v)
    # ties in d·v can't matter for the split, but zero weights would make a cluster empty
    # in weight while non-empty in count: a small floor keeps every mean defined
    d = d.clamp_min(0) + d.mean(dim=1, keepdim=True).clamp_min(_TINY) * 1e-12
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    sorted_d = torch.gather(d, 1, order)
    w_cum = torch.cumsum(sorted_d, dim=1)
    s_cum = torch.cumsum(sorted_d * sorted_v, dim=1)
    t_cum = torch.cumsum(sorted_d * sorted_v * sorted_v, dim=1)
    if m < 2:
        codes = torch.zeros_like(v, dtype=torch.bool)
        mean = s_cum[:, -1] / w_cum[:, -1]
        return codes, mean, mean.clone()
    w_l, s_l, t_l = w_cum[:, :-1], s_cum[:, :-1], t_cum[:, :-1]  # left = first k, k = 1..m-1
    w_r = w_cum[:, -1:] - w_l
    s_r = s_cum[:, -1:] - s_l
    t_r = t_cum[:, -1:] - t_l
    sse = (t_l - s_l * s_l / w_l) + (t_r - s_r * s_r / w_r)
    cuts_a_tie = sorted_v[:, 1:] == sorted_v[:, :-1]
    sse = sse.masked_fill(cuts_a_tie, float("inf"))
    k = sse.argmin(dim=1)  # left holds sorted positions 0..k
    constant = cuts_a_tie.all(dim=1)
    upper_sorted = torch.arange(m, device=v.device).unsqueeze(0) > k.unsqueeze(1)
    upper_sorted &= ~constant.unsqueeze(1)
    codes = torch.zeros_like(upper_sorted).scatter(1, order, upper_sorted)
    left, right = level_means(v, codes, d)
    return codes, left, right


def level_means(
    values: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weighted) mean of each row's lower and upper cluster, float64.

    An empty cluster takes the other one's mean (its level is never used).
    """
    v = values.to(torch.float64)
    d = torch.ones_like(v) if weights is None else weights.to(torch.float64).expand_as(v)
    up = codes.to(torch.float64)
    w_up, w_lo = (d * up).sum(1), (d * (1 - up)).sum(1)
    s_up, s_lo = (d * v * up).sum(1), (d * v * (1 - up)).sum(1)
    right = s_up / w_up.clamp_min(_TINY)
    left = s_lo / w_lo.clamp_min(_TINY)
    right = torch.where(w_up > 0, right, left)
    left = torch.where(w_lo > 0, left, right)
    return left, right


def cluster_matrix(
    weight: torch.Tensor, weights: torch.Tensor | None = None, each_row: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes (p, m) bool, left (p,), right (p,)) for a whole matrix.

    ``each_row=False`` clusters all p·m values at once (one pair of levels,
    repeated for every row); ``weights`` is the (m,) column weighting.
    """
    if each_row:
        return two_means(weight, weights)
    p, m = weight.shape
    flat_w = None if weights is None else weights.to(torch.float64).expand(p, m).reshape(1, -1)
    codes, left, right = two_means(weight.reshape(1, -1), flat_w)
    return codes.view(p, m), left.expand(p).clone(), right.expand(p).clone()


def dequantize_levels(codes: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Ŵ_ij = right_i where the code is set, else left_i."""
    return torch.where(codes, right.unsqueeze(1), left.unsqueeze(1))


def refit_levels(
    weight: torch.Tensor, s: torch.Tensor, codes: torch.Tensor, each_row: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """For fixed codes, the two levels minimising the output error ‖(W − Ŵ)Xᵀ‖², S = XᵀX.

    Per row a 2 × 2 least-squares system in (left, right) (summed over the
    rows for one pair per matrix). Where it is singular (a row with one
    cluster) the plain cluster means are kept. float64.
    """
    w, s = weight.to(torch.float64), s.to(torch.float64)
    up = codes.to(torch.float64)
    lo = 1 - up
    ws, los, ups = w @ s, lo @ s, up @ s
    m00, m01, m11 = (los * lo).sum(1), (los * up).sum(1), (ups * up).sum(1)
    r0, r1 = (ws * lo).sum(1), (ws * up).sum(1)
    if not each_row:
        m00, m01, m11, r0, r1 = (t.sum(0, keepdim=True) for t in (m00, m01, m11, r0, r1))
    det = m00 * m11 - m01 * m01
    ok = det > 1e-12 * (m00 * m11).clamp_min(1e-300)
    safe = torch.where(ok, det, torch.ones_like(det))
    plain_left, plain_right = level_means(
        w if each_row else w.reshape(1, -1), codes if each_row else codes.reshape(1, -1)
    )
    left = torch.where(ok, (m11 * r0 - m01 * r1) / safe, plain_left)
    right = torch.where(ok, (m00 * r1 - m01 * r0) / safe, plain_right)
    if not each_row:
        left, right = left.expand(w.shape[0]).clone(), right.expand(w.shape[0]).clone()
    return left, right


def output_error(weight: torch.Tensor, approx: torch.Tensor, s: torch.Tensor) -> float:
    """tr((W − Ŵ) S (W − Ŵ)ᵀ): the output error the refinements minimise."""
    e = weight.to(torch.float64) - approx.to(torch.float64)
    return float(((e @ s.to(torch.float64)) * e).sum())
