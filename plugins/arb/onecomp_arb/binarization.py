"""Alternating refined binarization (ARB-LLM, Li et al., ICLR 2025): the per-layer math.

Three variants of W ≈ Ŵ with one sign matrix B ∈ {±1}^{p×m}:

- ``arb`` (data-free, the seed's): Ŵ = α ⊙ B + μ per row, alternating the
  least-squares updates of μ, α and B = sign(W − μ);
- ``x`` (ARB-X): the same form, but μ and α minimise the output error
  ‖(w_i − ŵ_i) Xᵀ‖² with S = XᵀX (closed forms per row);
- ``rc`` (ARB-RC): Ŵ = diag(r) B diag(c), no μ, alternating the row and
  column scales (with S: the output error; without: the weight error).

All sums are float64. The seed's ``split_points`` walk (μ nudged by
quantile groups of |W − μ|) is kept: its μ seeds the final alternation
instead of being thrown away (the reference restarted from the row mean).
"""

from __future__ import annotations

import torch

#: the floor of a scale (the reference's, made explicit)
EPSILON = 1e-8


def signs_of(centred: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1, as float64."""
    return torch.where(centred >= 0, 1.0, -1.0).to(torch.float64)


def arb(
    weight: torch.Tensor, iters: int, mu: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data-free ARB: (alpha (p,), signs (p, m) ±1, mu (p,)), all float64.

    ``mu`` seeds the alternation (default: the row mean). Each iteration
    sets B = sign(W − μ), α = mean |W − μ| (the least-squares α for that B)
    and moves μ by the mean residual; a last B and α follow the final μ.
    """
    w = weight.to(torch.float64)
    mu = w.mean(dim=1) if mu is None else mu.to(torch.float64).clone()
    for _ in range(iters):
        centred = w - mu[:, None]
        b = signs_of(centred)
        alpha = (b * centred).mean(dim=1).clamp_min(EPSILON)
        mu = mu + (centred - alpha[:, None] * b).mean(dim=1)
    centred = w - mu[:, None]
    return centred.abs().mean(dim=1).clamp_min(EPSILON), signs_of(centred), mu


def split_mu(weight: torch.Tensor, iters: int, split_points: int) -> torch.Tensor:
    """The seed's split walk: μ refined group by group, from the least to the most salient.

    The weights are grouped by global quantiles of |W − μ₀| (μ₀ the row mean);
    for each group, ``max(1, iters // split_points)`` times: B = sign(W − μ),
    α_g = the group's mean |W − μ| per row, μ += (row sum of the group's
    residual) / m.
    """
    w = weight.to(torch.float64)
    p, m = w.shape
    mu = w.mean(dim=1)
    importance = (w - mu[:, None]).abs()
    qs = torch.linspace(0, 1, split_points + 1, dtype=torch.float64)[1:-1]
    flat = importance.reshape(-1)
    if flat.numel() > 1 << 24:  # torch.quantile's size limit: a seeded sample
        gen = torch.Generator().manual_seed(0)
        flat = flat[torch.randperm(flat.numel(), generator=gen)[: 1 << 24]]
    edges = [0.0, *torch.quantile(flat, qs).tolist(), float("inf")]
    steps = max(1, iters // split_points)
    for g in range(split_points):
        mask = (importance > edges[g]) & (importance <= edges[g + 1])
        if g == 0:
            mask |= importance == 0
        if not mask.any():
            continue
        size = mask.sum(dim=1).clamp_min(1).to(torch.float64)
        inside = mask.to(torch.float64)
        for _ in range(steps):
            centred = w - mu[:, None]
            b = signs_of(centred) * inside
            alpha = ((b * centred).sum(dim=1) / size).clamp_min(EPSILON)
            mu = mu + ((centred - alpha[:, None] * b) * inside).sum(dim=1) / m
    return mu


def arb_split(
    weight: torch.Tensor, iters: int, split_points: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ARB with the split walk: :func:`arb` for ``max(1, iters // 3)`` iterations from its μ."""
    if split_points <= 1:
        return arb(weight, iters)
    return arb(weight, max(1, iters // 3), mu=split_mu(weight, iters, split_points))


def arb_x(
    weight: torch.Tensor,
    s: torch.Tensor,
    iters: int,
    mu: torch.Tensor | None = None,
    signs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ARB-X: (alpha, signs, mu) with μ and α minimising ‖(w_i − α_i B_i − μ_i 1) Xᵀ‖², S = XᵀX.

    Closed forms per row: μ_i = (w_i − α_i B_i) S 1 / 1ᵀS1 and
    α_i = B_i S (w_i − μ_i 1)ᵀ / B_i S B_iᵀ. Without ``signs`` B follows
    sign(W − μ) at every iteration (the paper's rule); given ``signs``, B is
    kept and only μ, α are solved (jointly, exactly: a 2 × 2 system per row).
    """
    w = weight.to(torch.float64)
    s = s.to(torch.float64)
    if signs is not None:
        alpha, mu = joint_alpha_mu(w, s, signs.to(torch.float64))
        return alpha, signs.to(torch.float64), mu
    s1 = s.sum(dim=1)
    total = s1.sum().clamp_min(EPSILON)
    alpha, b, mu = arb(w, 0) if mu is None else arb(w, 0, mu)
    for _ in range(iters):
        mu = ((w - alpha[:, None] * b) @ s1) / total
        b = signs_of(w - mu[:, None])
        bs = b @ s
        alpha = ((bs * (w - mu[:, None])).sum(1) / (bs * b).sum(1).clamp_min(EPSILON)).clamp_min(
            EPSILON
        )
    return alpha, b, mu


def joint_alpha_mu(
    w: torch.Tensor, s: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For fixed signs, the (α, μ) per row minimising ‖(w_i − α_i B_i − μ_i 1) Xᵀ‖² (2 × 2 solve).

    A singular row (all signs equal) keeps α from the weight-error rule and μ = 0.
    """
    ws, bs, s1 = w @ s, b @ s, s.sum(dim=1)
    m_aa, m_am, m_mm = (bs * b).sum(1), bs.sum(1), s1.sum().expand(w.shape[0])
    r_a, r_m = (ws * b).sum(1), ws.sum(1)
    det = m_aa * m_mm - m_am * m_am
    ok = det > 1e-12 * (m_aa * m_mm).clamp_min(1e-300)
    safe = torch.where(ok, det, torch.ones_like(det))
    alpha = torch.where(ok, (m_mm * r_a - m_am * r_m) / safe, (b * w).mean(1))
    mu = torch.where(ok, (m_aa * r_m - m_am * r_a) / safe, torch.zeros_like(det))
    return alpha, mu


def arb_rc(
    weight: torch.Tensor,
    iters: int,
    s: torch.Tensor | None = None,
    signs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ARB-RC: (row (p,), signs (p, m), col (m,)) with Ŵ = diag(row) B diag(col), float64.

    B = sign(W) (optimal for positive scales) unless ``signs`` are given.
    Without ``s`` the alternation minimises the weight error:
    row_i = Σ_j col_j B_ij W_ij / Σ_j col_j², and symmetrically for col.
    With ``s`` = XᵀX it minimises the output error: each row scale is a
    1-D least squares in the metric S, the column scales one m × m solve of
    (S ∘ Bᵀdiag(row²)B) col = Σ_i row_i B_i ∘ (w_i S).
    """
    w = weight.to(torch.float64)
    b = signs_of(w) if signs is None else signs.to(torch.float64)
    p, m = w.shape
    col = torch.ones(m, dtype=torch.float64)
    row = (b * w).mean(1)
    if s is None:
        for _ in range(iters):
            bw = b * w
            row = (bw @ col) / (col @ col).clamp_min(EPSILON)
            col = (row @ bw) / (row @ row).clamp_min(EPSILON)
        return row, b, col
    s = s.to(torch.float64)
    ws = w @ s
    eye = torch.eye(m, dtype=torch.float64) * (s.diagonal().mean() * 1e-6 + 1e-30)
    for _ in range(iters):
        bc = b * col
        bcs = bc @ s
        row = (bcs * w).sum(1) / (bcs * bc).sum(1).clamp_min(1e-300)
        rb = row[:, None] * b
        gram = s * (rb.t() @ rb) + eye
        rhs = (rb * ws).sum(0)
        col = torch.linalg.solve(gram, rhs)
    return row, b, col


def compose(
    row: torch.Tensor, signs: torch.Tensor, mu: torch.Tensor | None, col: torch.Tensor | None
) -> torch.Tensor:
    """Ŵ = diag(row) B diag(col) + μ 1ᵀ (``col``/``mu`` None: left out)."""
    w = row[:, None] * signs
    if col is not None:
        w = w * col[None, :]
    if mu is not None:
        w = w + mu[:, None]
    return w
