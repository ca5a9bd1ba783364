"""Trainable 1-bit layers for block fine-tuning: straight-through signs and scaled-sign twins.

A :class:`ScaledSignsTwin` is the differentiable twin (a
:class:`~onecomp_core.contract.TrainableLayer`) of a
:class:`~onecomp_core.kernels.binary.ScaledSignLinear`:
W = diag(row)·S·diag(col) + offset·1ᵀ. The scales are trained as
multiplicative corrections (init 1) and the offset as a fraction of the row
scale (init 0), so one learning rate fits layers of any magnitude; with
``train_signs`` S gets real latents (init ±1) trained straight-through.
A method subclasses it and implements ``to_result`` from :meth:`parts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..contract import TrainableLayer


def ste_sign(latent: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """sign(latent) (0 ↦ +1) forward; identity gradient backward (zero where |latent| > clip)."""
    hard = torch.where(latent >= 0, 1.0, -1.0).to(latent.dtype)
    if not latent.requires_grad:
        return hard
    soft = latent if clip is None else latent.clamp(-clip, clip)
    return soft + (hard - soft).detach()


@dataclass
class SignParts:
    """What a trained twin stands for: ±1 signs and fp32 vectors, detached on the CPU."""

    signs: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor | None
    offset: torch.Tensor | None

    def finite(self) -> bool:
        return all(
            bool(torch.isfinite(v).all())
            for v in (self.row, self.col, self.offset)
            if v is not None
        )


class ScaledSignsTwin(TrainableLayer):
    """Trainable W = diag(row0·θr)·S·diag(col0·θc) + (offset0 + row0·θμ)·1ᵀ, y = W x + bias."""

    def __init__(
        self,
        signs: torch.Tensor,
        row: torch.Tensor,
        col: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        *,
        train_signs: bool = False,
        sign_lr: float = 0.0,
    ) -> None:
        super().__init__()
        self.train_signs, self.sign_lr = train_signs, sign_lr
        s = torch.where(signs.float() >= 0, 1.0, -1.0)
        if train_signs:
            self.sign_latent = nn.Parameter(s)
        else:
            self.register_buffer("sign_latent", s)
        self.register_buffer("row0", row.detach().float().reshape(-1).clone())
        self.theta_row = nn.Parameter(torch.ones_like(self.row0))
        self.register_buffer("col0", None if col is None else col.detach().float().reshape(-1))
        self.theta_col = None if col is None else nn.Parameter(torch.ones_like(self.col0))
        self.register_buffer(
            "offset0", None if offset is None else offset.detach().float().reshape(-1)
        )
        self.theta_offset = None if offset is None else nn.Parameter(torch.zeros_like(self.row0))
        self.register_buffer("bias", None if bias is None else bias.detach().float().reshape(-1))

    # -- the current values ----------------------------------------------------------------
    def row(self) -> torch.Tensor:
        return self.row0 * self.theta_row

    def col(self) -> torch.Tensor | None:
        return None if self.col0 is None else self.col0 * self.theta_col

    def offset(self) -> torch.Tensor | None:
        return None if self.offset0 is None else self.offset0 + self.row0 * self.theta_offset

    def sign_matrix(self) -> torch.Tensor:
        """S as ±1 (straight-through when the latents train)."""
        return ste_sign(self.sign_latent)

    def weight(self) -> torch.Tensor:
        """The dense W (out × in), fp32, differentiable in the trained values."""
        w = self.row()[:, None] * self.sign_matrix()
        col = self.col()
        if col is not None:
            w = w * col[None, :]
        offset = self.offset()
        if offset is not None:
            w = w + offset[:, None]
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() @ self.weight().t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """The vectors at ``lr``; the sign latents (when they train) at ``sign_lr``."""
        vectors = [p for p in (self.theta_row, self.theta_col, self.theta_offset) if p is not None]
        groups = [{"params": vectors, "lr": lr}]
        if self.train_signs and self.sign_lr > 0:
            groups.append({"params": [self.sign_latent], "lr": self.sign_lr})
        elif self.train_signs:
            self.sign_latent.requires_grad_(False)
        return groups

    def parts(self) -> SignParts:
        """The trained signs and vectors, detached, fp32, on the CPU (for ``to_result``)."""
        with torch.no_grad():

            def cpu(v: torch.Tensor | None) -> torch.Tensor | None:
                return None if v is None else v.detach().float().cpu()

            signs = torch.where(self.sign_latent.detach() >= 0, 1.0, -1.0).cpu()
            return SignParts(signs, cpu(self.row()), cpu(self.col()), cpu(self.offset()))
