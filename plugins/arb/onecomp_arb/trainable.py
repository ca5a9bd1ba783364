"""ARB's layer made trainable for the engine's block fine-tuning.

W = diag(α)·B·diag(c) + μ·1ᵀ is exactly the shared scaled-sign twin
(:class:`onecomp_core.kernels.ScaledSignsTwin`): α, and c (ARB-RC) or μ
(ARB, ARB-X) train; B trains straight-through when ``sign_lr`` > 0.
"""

from __future__ import annotations

import dataclasses

import torch

from onecomp_core.kernels import ScaledSignsTwin, pack_signs

from .result import ARBResult


def _half(v: torch.Tensor | None) -> torch.Tensor | None:
    return None if v is None else v.to(torch.float16)


class TrainableARB(ScaledSignsTwin):
    """The twin of one :class:`ARBResult`."""

    def __init__(self, result: ARBResult, bias: torch.Tensor | None, sign_lr: float = 0.0):
        super().__init__(
            result.sign_matrix(),
            result.alpha.float(),
            col=None if result.col_scale is None else result.col_scale.float(),
            offset=None if result.mu is None else result.mu.float(),
            bias=bias,
            train_signs=sign_lr > 0,
            sign_lr=sign_lr,
        )
        self.layer_result = result

    def to_result(self) -> ARBResult | None:
        parts = self.parts()
        if not parts.finite():
            return None
        return dataclasses.replace(
            self.layer_result,
            signs=pack_signs(parts.signs),
            alpha=_half(parts.row),
            col_scale=_half(parts.col),
            mu=_half(parts.offset),
            finetuned=True,
        )
