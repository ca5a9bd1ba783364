"""The MDBF representation: sign matrices with rank-l magnitude envelopes, its rank and bits.

Per path: F = S_A ⊙ (A·Q_Uᵀ) (p × r) and G = S_B ⊙ (Q_V·Bᵀ) (r × m), Ŵ = Σ_paths F·G,
with S_A ∈ {±1}^{p×r}, S_B ∈ {±1}^{r×m} and fp16 envelopes A (p × l),
Q_U (r × l), Q_V (r × l), B (m × l). l = 1 is DBF (c = Q_U ⊙ Q_V).
The projection onto that set, Z ↦ sign(Z) ⊙ TSVD_l(|Z|), is the ADMM's Z-step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_EPS = 1e-12
BUDGETS = ("signs", "total")


@dataclass
class Path:
    """One path's factors (fp32): signs ±1 and the four envelopes."""

    sign_a: torch.Tensor  # (p, r)
    env_a: torch.Tensor  # (p, l)
    env_qu: torch.Tensor  # (r, l)
    sign_b: torch.Tensor  # (r, m)
    env_qv: torch.Tensor  # (r, l)
    env_b: torch.Tensor  # (m, l)

    def left(self) -> torch.Tensor:
        """F = S_A ⊙ (A·Q_Uᵀ)."""
        return self.sign_a * (self.env_a @ self.env_qu.t())

    def right(self) -> torch.Tensor:
        """G = S_B ⊙ (Q_V·Bᵀ)."""
        return self.sign_b * (self.env_qv @ self.env_b.t())

    def weight(self) -> torch.Tensor:
        return self.left() @ self.right()


def compose(paths: list[Path]) -> torch.Tensor:
    """Σ_paths F·G (fp32)."""
    return sum(p.weight() for p in paths)


def rank_for(
    out_features: int,
    in_features: int,
    bits: float,
    envelopes: int,
    paths: int,
    budget: str = "signs",
    scale_bits: int = 16,
) -> int:
    """The inner rank r of each path for ``bits`` per weight.

    ``budget="signs"`` (DBF's rule): the sign matrices of all paths cost
    ``bits``, r = round(b·pm / (P·(p+m))), at least 1, not capped (DBF does not
    cap k either). ``budget="total"`` (the reference's rule): everything
    stored counts, r = floor((b·pm/P − s·l(p+m)) / ((p+m) + 2sl)), clamped to
    [1, min(p, m)].
    """
    p, m, env, s = out_features, in_features, envelopes, scale_bits
    if budget == "signs":
        return max(1, math.floor(bits * p * m / (paths * (p + m)) + 0.5))
    r = math.floor((bits * p * m / paths - s * env * (p + m)) / ((p + m) + 2 * s * env))
    return min(max(r, 1), p, m)


def mdbf_bits(
    out_features: int, in_features: int, rank: int, envelopes: int, paths: int, scale_bits: int = 16
) -> float:
    """b_eff = P·[r(p+m) + s·l(p+m+2r)] / (pm): signs plus every envelope."""
    p, m, r, env = out_features, in_features, rank, envelopes
    return paths * (r * (p + m) + scale_bits * env * (p + m + 2 * r)) / (p * m)


def sign_of(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def low_rank(
    mag: torch.Tensor, rank: int, warm: torch.Tensor | None, iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best rank-l approximation of ``mag`` (a × b) as (left a×l, right b×l, new warm b×l).

    Block subspace iteration warm-started from ``warm`` (the right basis of
    the previous call), then an exact l × l SVD inside the subspaces; with a
    converged basis this is the truncated SVD. Small matrices use the exact SVD.
    """
    a, b = mag.shape
    k = min(rank, a, b)
    if warm is None or a * b <= 4096:
        u, s, vh = torch.linalg.svd(mag, full_matrices=False)
        left, right = u[:, :k] * s[:k], vh[:k].t()
        return _pad(left, rank), _pad(right, rank), _pad(right, rank)
    q = warm[:, :k]
    for _ in range(iters):
        p_, _ = torch.linalg.qr(mag @ q)
        q, _ = torch.linalg.qr(mag.t() @ p_)
    p_, _ = torch.linalg.qr(mag @ q)
    u, s, vh = torch.linalg.svd(p_.t() @ mag @ q)
    left = (p_ @ u) * s
    right = q @ vh.t()
    return _pad(left, rank), _pad(right, rank), _pad(right, rank)


def _pad(x: torch.Tensor, cols: int) -> torch.Tensor:
    if x.shape[1] == cols:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], cols - x.shape[1])], dim=1)


def project(
    z: torch.Tensor, envelopes: int, warm: torch.Tensor | None, iters: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z ↦ sign(Z) ⊙ TSVD_l(|Z|): (projected, sign, left, right) with |·| ≈ left·rightᵀ."""
    sign = sign_of(z)
    left, right, _ = low_rank(z.abs(), envelopes, warm, iters)
    return sign * (left @ right.t()), sign, left, right


def orient(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each envelope component so its columns sum to a positive number (same product)."""
    flip = torch.where(left.sum(0) < 0, -1.0, 1.0)
    return left * flip, right * flip


def gauge(path: Path) -> Path:
    """Rescale the envelopes (same Ŵ) so every factor's peak is the same: fp16-safe.

    Per component k: A_k·λ with Q_U,k/λ, and B_k·μ with Q_V,k/μ; then Q_U·ν with Q_V/ν
    (all components at once, which keeps F·G).
    """

    def peak(x: torch.Tensor) -> torch.Tensor:
        return x.abs().amax(0).clamp_min(_EPS)

    a, qu, qv, b = path.env_a, path.env_qu, path.env_qv, path.env_b
    lam = (peak(qu) / peak(a)).sqrt()
    a, qu = a * lam, qu / lam
    mu = (peak(qv) / peak(b)).sqrt()
    b, qv = b * mu, qv / mu
    nu = (qv.abs().max().clamp_min(_EPS) / qu.abs().max().clamp_min(_EPS)).sqrt()
    qu, qv = qu * nu, qv / nu
    return Path(path.sign_a, a, qu, path.sign_b, qv, b)
