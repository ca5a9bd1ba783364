"""The weighted objective of the fit: input scales s and the input correlation C from H.

The fit minimises ‖(W − Ŵ)·diag(s)·L‖² with s_j = sqrt(mean x_j²) and
C = L·Lᵀ = (1−λ)·D⁻¹(H/2)D⁻¹ + λ·I (D = diag(s), H = 2XᵀX/N): exactly the
layer's output error tr((W − Ŵ)·H·(W − Ŵ)ᵀ)/2 at λ = 0, pulled towards the
diagonal weighting by the damping λ (noise in H).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def activation_scales(hessian_diag: torch.Tensor) -> torch.Tensor:
    """s_j = sqrt(diag(H)_j / 2); dead channels floored at 1e-3 of the mean scale."""
    s = (hessian_diag.detach().float().cpu().clamp_min(0) / 2).sqrt()
    return s.clamp_min(1e-3 * s.mean().clamp_min(_EPS))


def input_correlation(hessian: torch.Tensor, scales: torch.Tensor, damp: float) -> torch.Tensor:
    """C = (1−λ)·D⁻¹(H/2)D⁻¹ + λ·I, symmetrised."""
    corr = hessian.detach().float().cpu() / 2 / (scales[:, None] * scales[None, :])
    corr = (corr + corr.t()) / 2
    return (1 - damp) * corr + damp * torch.eye(corr.shape[0])
