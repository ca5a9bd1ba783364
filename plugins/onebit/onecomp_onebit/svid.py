"""OneBit's layer-wise math: Sign-Value-Independent Decomposition, with optional balancing.

W ≈ diag(a)·S·diag(b), S = sign(W) (0 ↦ +1) and a gᵀ-style rank-1 fit
a bᵀ ≈ |W| (Xu et al., OneBit, NeurIPS 2024). Optional preconditioning, as
in the seed: Sinkhorn-ℓ1 balancing W_b = D_r W D_c (then the fit is done on
W_b and undone by folding D_r, D_c into a and b — the reference forgets this
fold, its stored scales describe the balanced matrix), or importance scaling
by the input second moments (columns × √diag H, undone on b).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: below this many elements the rank-1 fit is an exact SVD (the seed's threshold)
EXACT_SVD_ELEMENTS = 10**6
#: balancing stops when row and column sums are this close (relative) three times running
BALANCE_TOL = 1e-3
BALANCE_PATIENCE = 3


@dataclass
class SVID:
    """a (p), S (p × m, ±1), b (m), fp32: Ŵ = diag(a)·S·diag(b)."""

    a: torch.Tensor
    signs: torch.Tensor
    b: torch.Tensor

    def weight(self) -> torch.Tensor:
        return self.a[:, None] * self.signs * self.b[None, :]


def signs_of(w: torch.Tensor) -> torch.Tensor:
    """sign(W) with 0 ↦ +1, fp32."""
    return torch.where(w >= 0, 1.0, -1.0)


def sinkhorn_balance(
    w: torch.Tensor, iters: int = 40, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive (D_r (p), D_c (m)) with D_r|W|D_c of row ℓ1 norms α and column ℓ1 norms pα/m.

    Alternating row and column rescaling (Sinkhorn), each round followed by a
    gauge that keeps mean D_r = mean D_c; stops after ``iters`` rounds or when
    both sums are within 1e-3 (relative) for three rounds. Empty rows or
    columns keep the factor 1.
    """
    a = w.detach().abs().double()
    p, m = a.shape
    beta = p * alpha / m
    d_r = torch.ones(p, dtype=torch.float64)
    d_c = torch.ones(m, dtype=torch.float64)
    calm = 0
    for _ in range(iters):
        rows = a @ d_c * d_r
        d_r = torch.where(rows > 0, d_r * alpha / rows.clamp_min(1e-300), d_r)
        cols = d_r @ a * d_c
        d_c = torch.where(cols > 0, d_c * beta / cols.clamp_min(1e-300), d_c)
        gauge = (d_r.mean() / d_c.mean()).sqrt()
        d_r, d_c = d_r / gauge, d_c * gauge
        rows = a @ d_c * d_r
        cols = d_r @ a * d_c
        calm = calm + 1 if max(_gap(rows, alpha), _gap(cols, beta)) < BALANCE_TOL else 0
        if calm >= BALANCE_PATIENCE:
            break
    return d_r.float(), d_c.float()


def _gap(sums: torch.Tensor, target: float) -> float:
    """The largest relative distance of the non-empty sums from ``target``."""
    live = sums[sums > 0]
    return float((live - target).abs().max() / target) if live.numel() else 0.0


def rank1_nonnegative(
    a: torch.Tensor, iters: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) ≥ 0 with u vᵀ the best rank-1 approximation of the non-negative matrix ``a``.

    Exact SVD below 10⁶ elements, else ``iters`` seeded power iterations from a
    positive start (Perron: the leading singular vectors of a non-negative
    matrix can be taken non-negative). Both carry √σ₁, so ‖u‖ = ‖v‖.
    """
    a = a.double()
    if a.numel() < EXACT_SVD_ELEMENTS:
        u_all, s_all, vh_all = torch.linalg.svd(a, full_matrices=False)
        u, s, v = u_all[:, 0].abs(), s_all[0], vh_all[0].abs()
    else:
        gen = torch.Generator().manual_seed(seed)
        v = torch.rand(a.shape[1], generator=gen, dtype=torch.float64) + 0.5
        v = v / v.norm()
        for _ in range(iters):
            u = a @ v
            u = u / u.norm().clamp_min(1e-300)
            v = a.t() @ u
            v = v / v.norm().clamp_min(1e-300)
        s = u @ a @ v
    root = s.clamp_min(0).sqrt()
    return (u * root).float(), (v * root).float()


def svid(
    w: torch.Tensor,
    *,
    use_balancing: bool = True,
    balance_iters: int = 40,
    balance_alpha: float = 1.0,
    importance: torch.Tensor | None = None,
    iters: int = 10,
    seed: int = 0,
) -> SVID:
    """OneBit's initialisation of one weight (p × m), with the balancing folded back.

    ``importance``: √diag H per input column (importance scaling, used only
    without balancing). Power iterations: max(iters, 30), as in the seed.
    """
    w = w.detach().float()
    signs = signs_of(w)
    if use_balancing:
        d_r, d_c = sinkhorn_balance(w, balance_iters, balance_alpha)
        u, v = rank1_nonnegative(w.abs() * d_r[:, None] * d_c[None, :], max(iters, 30), seed)
        # the fix: D_r Ŵ D_c ≈ diag(u) S diag(v)  ⇒  Ŵ ≈ diag(u / D_r) S diag(v / D_c)
        return SVID(u / d_r, signs, v / d_c)
    if importance is not None:
        scale = importance.float().clamp_min(1e-8)
        u, v = rank1_nonnegative(w.abs() * scale[None, :], max(iters, 30), seed)
        return SVID(u, signs, v / scale)
    u, v = rank1_nonnegative(w.abs(), max(iters, 30), seed)
    return SVID(u, signs, v)
