"""Optional gradient refinement of the envelopes after ADMM (the seed's ``use_gradient_refine``).

Signs frozen; Adam (cosine decay, gradient-norm clip 1) on the four
envelope factors of every path, on the same weighted objective as the fit
(‖(W − Ŵ)·diag(s)·L‖², C = L·Lᵀ); the best iterate is kept.
"""

from __future__ import annotations

import math

import torch

from .envelope import Path, compose


def objective(
    weight: torch.Tensor, approx: torch.Tensor, scales: torch.Tensor | None,
    correlation: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """‖(W − Ŵ)·diag(s)·L‖² = tr(E_s·C·E_sᵀ) with E_s = (W − Ŵ)·diag(s)."""
    err = weight - approx
    if scales is not None:
        err = err * scales[None, :]
    if correlation is None:
        return err.pow(2).sum()
    return ((err @ correlation) * err).sum()


def gradient_refine(
    weight: torch.Tensor,
    paths: list[Path],
    scales: torch.Tensor | None,
    correlation: torch.Tensor | None,
    steps: int,
    lr: float,
) -> list[Path]:
    """Adam on the envelopes (multiplicative, init 1) with the signs fixed; best iterate kept."""
    w = weight.detach().float().cpu()
    thetas = [
        [torch.ones_like(t, requires_grad=True) for t in (p.env_a, p.env_qu, p.env_qv, p.env_b)]
        for p in paths
    ]

    def current() -> list[Path]:
        return [
            Path(p.sign_a, p.env_a * ta, p.env_qu * tu, p.sign_b, p.env_qv * tv, p.env_b * tb)
            for p, (ta, tu, tv, tb) in zip(paths, thetas, strict=True)
        ]

    params = [t for group in thetas for t in group]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    with torch.no_grad():
        best = float(objective(w, compose(paths), scales, correlation))
    best_paths = paths
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = objective(w, compose(current()), scales, correlation)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            value = float(loss.detach())
            if math.isfinite(value) and value < best:  # the iterate before this step
                best = value
                best_paths = [Path(*(t.detach().clone() for t in _fields(p))) for p in current()]
    return best_paths


def _fields(p: Path) -> tuple[torch.Tensor, ...]:
    return (p.sign_a, p.env_a, p.env_qu, p.sign_b, p.env_qv, p.env_b)
