"""The trainable twin of a QBB layer for the engine's block fine-tuning.

The scales are trained as multiplicative corrections a_k·θ_k (θ init 1), so
one learning rate fits layers of any magnitude; with a sign learning rate
the N sign matrices get real latents (init ±1) trained through the
straight-through estimator ``ste_type`` names. The forward multiplies by the
dense Σ_k B_k·diag(a_k·θ_k), the same numbers as the inference layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from onecomp_core.contract import TrainableLayer
from onecomp_core.kernels import pack_signs, ste_sign

from .result import QBBResult


def straight_through(latent: torch.Tensor, kind: str) -> torch.Tensor:
    """sign(latent) forward; backward by ``kind``: clipped (identity where |v| ≤ 1), identity, tanh.

    The reference's "identity" passed no gradient at all (sign has none), so its
    sign latents never moved; here every kind passes one.
    """
    if kind == "clipped":
        return ste_sign(latent, clip=1.0)
    if kind == "identity":
        return ste_sign(latent)
    hard = torch.where(latent >= 0, 1.0, -1.0).to(latent.dtype)
    soft = torch.tanh(latent)
    return soft + (hard - soft).detach()


class QBBTwin(TrainableLayer):
    """Trainable Ŵ = Σ_k B_k·diag(a_k ⊙ θ_k) (+ bias); B_k straight-through when they train."""

    def __init__(
        self,
        result: QBBResult,
        bias: torch.Tensor | None,
        sign_lr: float = 0.0,
        ste_type: str = "clipped",
    ) -> None:
        super().__init__()
        self.result, self.sign_lr, self.ste_type = result, sign_lr, ste_type
        signs = result.unpacked_signs()
        if sign_lr > 0:
            self.latent = nn.Parameter(signs)
        else:
            self.register_buffer("latent", signs)
        self.register_buffer("alphas0", result.alphas.float().clone())
        self.theta = nn.Parameter(torch.ones_like(self.alphas0))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def signs(self) -> torch.Tensor:
        if self.sign_lr > 0:
            return straight_through(self.latent, self.ste_type)
        return self.latent

    def weight(self) -> torch.Tensor:
        return (self.signs() * (self.alphas0 * self.theta)[:, None, :]).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() @ self.weight().t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        groups = [{"params": [self.theta], "lr": lr}]
        if self.sign_lr > 0:
            groups.append({"params": [self.latent], "lr": self.sign_lr})
        return groups

    def to_result(self) -> QBBResult | None:
        with torch.no_grad():
            alphas = (self.alphas0 * self.theta).detach().cpu()
            if not torch.isfinite(alphas).all() or alphas.abs().max() > 65504:
                return None
            signs = torch.where(self.latent.detach().cpu() >= 0, 1.0, -1.0)
            return dataclasses.replace(
                self.result,
                signs=torch.stack([pack_signs(s) for s in signs]),
                alphas=alphas.to(torch.float16),
                finetuned=True,
            )
