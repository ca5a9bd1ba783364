"""CQ's layer made trainable for the engine's block fine-tuning.

The two levels of a row are trained as α = (right − left)/2 and
μ = (right + left)/2 on the shared scaled-sign twin
(:class:`onecomp_core.kernels.ScaledSignsTwin`): W = diag(α)·S + μ·1ᵀ, with
S the ±1 codes, trained straight-through when ``sign_lr`` > 0.
"""

from __future__ import annotations

import dataclasses

import torch

from onecomp_core.kernels import ScaledSignsTwin, pack_signs

from .result import CQResult


class TrainableCQ(ScaledSignsTwin):
    """The twin of one :class:`CQResult` with per-row levels."""

    def __init__(self, result: CQResult, bias: torch.Tensor | None, sign_lr: float = 0.0):
        lo, hi = result.left_mean.float(), result.right_mean.float()
        super().__init__(
            result.upper(),
            (hi - lo) / 2,
            offset=(hi + lo) / 2,
            bias=bias,
            train_signs=sign_lr > 0,
            sign_lr=sign_lr,
        )
        self.layer_result = result

    def to_result(self) -> CQResult | None:
        parts = self.parts()
        if not parts.finite():
            return None
        left, right = parts.offset - parts.row, parts.offset + parts.row
        return dataclasses.replace(
            self.layer_result,
            codes=pack_signs(parts.signs),
            left_mean=left.to(torch.float16),
            right_mean=right.to(torch.float16),
            finetuned=True,
        )
