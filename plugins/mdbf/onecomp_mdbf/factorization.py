"""Multi-envelope double binary factorization of one weight matrix (pure functions).

Fits Ŵ = Σ_paths F·G (see :mod:`onecomp_mdbf.envelope`) on the weighted
objective ‖(W − Ŵ)·diag(s)·L‖² with s_j = sqrt(mean x_j²) and C = L·Lᵀ the
input correlation (C = I: the diagonal weighting; s = 1 and C = I: the
reference's weight error). Steps, per the MDBF paper and the reference:

1. init, path by path on the running residual: a rank-r SVD split
   U_r√Σ_r, √Σ_r·V_rᵀ (of R·L, un-whitened: the activation-aware "OSVD"
   init), projected onto sign ⊙ rank-l magnitude;
2. ADMM, path by path against the target minus the other paths: for
   ``outer`` iterations an F-step (G fixed, rows unit norm) and a G-step
   (F fixed, columns unit norm), each ``inner`` scaled-ADMM steps on
   min ‖T − K·Z‖² + λ‖Z‖², Z ∈ {sign ⊙ rank-l}: a ridge solve (the G-step
   solves the Sylvester equation K ᵀK·Y·C + (λ+ρ)·Y = … in the two
   eigenbases), the projection, the dual update; ρ of the first inner step
   warms up 0.03 → 1 (cubic), later inner steps use ρ = 1;
3. undo the weighting and the normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .envelope import Path, gauge, orient, project, sign_of

_EPS = 1e-12


@dataclass
class FitSettings:
    """The knobs of one layer's fit (a plain record; the method builds it from its config)."""

    rank: int
    envelopes: int
    paths: int
    outer: int
    inner: int
    reg: float
    seed: int


@dataclass
class _Side:
    """ADMM state of one factor: projected iterate Z with its parts, scaled dual U, warm basis."""

    z: torch.Tensor
    sign: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    u: torch.Tensor
    warm: torch.Tensor | None


def _side(z0: torch.Tensor, envelopes: int) -> _Side:
    z, sign, left, right = project(z0, envelopes, None)
    return _Side(z, sign, left, right, torch.zeros_like(z), right)


def _step(
    side: _Side, y_of, scale: torch.Tensor, rows: bool, rho0: float, inner: int, env: int
) -> None:
    """``inner`` ADMM steps in the normalised frame (Z̃ = Z·scale), written back unscaled.

    ``rows``: ``scale`` (r, 1) scales the rows (G-step), else (1, r) the columns (F-step).
    """
    z = side.z * scale
    u = side.u * scale
    for j in range(inner):
        rho = rho0 if j == 0 else 1.0
        y = y_of(z - u, rho)
        z, sign, left, right = project(y + u, env, side.warm)
        side.warm = right
        u = u + y - z
    side.z, side.u = z / scale, u / scale
    side.sign, side.left, side.right = sign, left, right
    # keep the parts in the unscaled frame: Z = sign ⊙ (left·rightᵀ) / scale
    if rows:  # row scaling (G-step): divide the left part
        side.left = left / scale
    else:  # column scaling (F-step): divide the right part
        side.right = right / scale.reshape(-1, 1)


def rho_schedule(it: int, outer: int) -> float:
    """ρ of the first inner step: 0.03 + 0.97·min(1, it/(outer−3))³."""
    return 0.03 + 0.97 * min(1.0, it / max(1, outer - 3)) ** 3


def factorize(
    weight: torch.Tensor,
    settings: FitSettings,
    col_scale: torch.Tensor | None = None,
    correlation: torch.Tensor | None = None,
    init_correlation: torch.Tensor | None = None,
) -> list[Path]:
    """Fit the paths of Ŵ ≈ W minimising ‖(W − Ŵ)·diag(s)·L‖², C = L·Lᵀ (default: I).

    ``init_correlation`` whitens the SVD init (default: ``correlation``); the
    result depends only on the inputs and ``settings.seed``.
    """
    with torch.no_grad():
        init = correlation if init_correlation is None else init_correlation
        return _factorize(weight, settings, col_scale, correlation, init)


def _eig(correlation: torch.Tensor | None):
    if correlation is None:
        return None
    e, v = torch.linalg.eigh(correlation.float().cpu())
    return e.clamp_min(1e-6 * e.max()), v


def _factorize(
    weight: torch.Tensor,
    st: FitSettings,
    col_scale: torch.Tensor | None,
    correlation: torch.Tensor | None,
    init_correlation: torch.Tensor | None,
) -> list[Path]:
    w = weight.detach().float().cpu()
    p, m = w.shape
    s = torch.ones(m) if col_scale is None else col_scale.float().cpu()
    target = w * s[None, :]
    norm = float(target.norm() / math.sqrt(p * m)) or 1.0
    target = target / norm
    gen = torch.Generator().manual_seed(st.seed)
    eig = _eig(correlation)
    init_eig = eig if init_correlation is correlation else _eig(init_correlation)
    sides = _init(target, st, init_eig, gen)
    tc = target if eig is None else target @ (eig[1] * eig[0]) @ eig[1].t()
    for idx in range(st.paths):
        others = sum(
            (a.z @ b.z for k, (a, b) in enumerate(sides) if k != idx), torch.zeros_like(target)
        )
        goal = target - others
        goal_c = tc - (others if eig is None else others @ (eig[1] * eig[0]) @ eig[1].t())
        f, g = sides[idx]
        for it in range(st.outer):
            rho0 = rho_schedule(it, st.outer)
            _f_step(goal_c, f, g, eig, rho0, st)
            _g_step(goal, goal_c, f, g, eig, rho0, st)
    paths = []
    for f, g in sides:
        env_a, env_qu = orient(f.left * norm, f.right)
        env_b, env_qv = orient(g.right / s[:, None], g.left)
        paths.append(gauge(Path(f.sign, env_a, env_qu, g.sign, env_qv, env_b)))
    return paths


def _init(
    target: torch.Tensor, st: FitSettings, eig, gen: torch.Generator
) -> list[tuple[_Side, _Side]]:
    """Path by path on the running residual: SVD split of R (whitened by L), projected."""
    p, m = target.shape
    residual = target.clone()
    sides = []
    for _ in range(st.paths):
        noisy = residual + 1e-6 * residual.abs().max() * torch.randn(p, m, generator=gen)
        if eig is None:
            u, sv, vh = torch.linalg.svd(noisy, full_matrices=False)
            right = vh
        else:
            e, v = eig
            u, sv, vh = torch.linalg.svd(noisy @ (v * e.sqrt()), full_matrices=False)
            right = (vh / e.sqrt()[None, :]) @ v.t()  # √Σ·V_rᵀ·L⁻¹ once scaled below
        k = min(st.rank, sv.numel())
        root = sv[:k].sqrt()
        f0 = u[:, :k] * root[None, :]
        g0 = root[:, None] * right[:k]
        if st.rank > k:  # rank beyond min(p, m): small random extra components
            tiny = 0.05 * float(root.mean())
            f0 = torch.cat([f0, tiny * torch.randn(p, st.rank - k, generator=gen)], 1)
            g0 = torch.cat([g0, tiny * torch.randn(st.rank - k, m, generator=gen)], 0)
        f, g = _side(f0, st.envelopes), _side(g0, st.envelopes)
        residual = residual - f.z @ g.z
        sides.append((f, g))
    return sides


def _f_step(goal_c: torch.Tensor, f: _Side, g: _Side, eig, rho0: float, st: FitSettings) -> None:
    """F with G fixed: min ‖(T − F·G)L‖² + λ‖F‖² over F ∈ sign ⊙ rank-l (G rows unit norm)."""
    d = g.z.norm(dim=1).clamp_min(_EPS)
    gn = g.z / d[:, None]
    gc = gn if eig is None else gn @ (eig[1] * eig[0]) @ eig[1].t()
    gram = gc @ gn.t()
    rhs = goal_c @ gn.t()
    lam = st.reg * float(gram.diagonal().mean())
    eye = torch.eye(gram.shape[0])
    inverses: dict[float, torch.Tensor] = {}

    def solve(anchor: torch.Tensor, rho: float) -> torch.Tensor:
        if rho not in inverses:
            inverses[rho] = torch.linalg.inv(gram + (lam + rho) * eye)
        return (rhs + rho * anchor) @ inverses[rho]

    _step(f, solve, d[None, :], False, rho0, st.inner, st.envelopes)


def _g_step(
    goal: torch.Tensor, goal_c: torch.Tensor, f: _Side, g: _Side, eig, rho0: float, st: FitSettings
) -> None:
    """G with F fixed (F columns unit norm): ridge, or the Sylvester equation with C."""
    d = f.z.norm(dim=0).clamp_min(_EPS)
    fn = f.z / d[None, :]
    gram = fn.t() @ fn
    lam = st.reg * float(gram.diagonal().mean())
    if eig is None:
        rhs = fn.t() @ goal
        eye = torch.eye(gram.shape[0])
        inverses: dict[float, torch.Tensor] = {}

        def solve(anchor: torch.Tensor, rho: float) -> torch.Tensor:
            if rho not in inverses:
                inverses[rho] = torch.linalg.inv(gram + (lam + rho) * eye)
            return inverses[rho] @ (rhs + rho * anchor)

    else:
        e2, v2 = eig
        e1, v1 = torch.linalg.eigh(gram)
        base = v1.t() @ (fn.t() @ goal_c) @ v2
        denom = e1.clamp_min(0)[:, None] * e2[None, :] + lam

        def solve(anchor: torch.Tensor, rho: float) -> torch.Tensor:
            rot = base + rho * (v1.t() @ anchor @ v2)
            return v1 @ (rot / (denom + rho)) @ v2.t()

    _step(g, solve, d[:, None], True, rho0, st.inner, st.envelopes)


__all__ = ["FitSettings", "factorize", "rho_schedule", "sign_of"]
