"""OneBit's trainable twin for the engine's block fine-tuning: a and b (and optionally S)."""

from __future__ import annotations

import dataclasses

import torch

from onecomp_core.kernels import ScaledSignsTwin, pack_signs

from .result import OneBitResult, fp16_pair


class OneBitTwin(ScaledSignsTwin):
    """y = a ⊙ (S (b ⊙ x)) + bias with a, b trainable (multiplicative corrections, init 1).

    With ``sign_lr`` > 0 the signs train too (straight-through latents init ±1).
    """

    def __init__(self, result: OneBitResult, bias: torch.Tensor | None, sign_lr: float = 0.0):
        super().__init__(
            result.signs(),
            result.a,
            result.b,
            bias=bias,
            train_signs=sign_lr > 0,
            sign_lr=sign_lr,
        )
        self.result = result

    def to_result(self) -> OneBitResult | None:
        """The trained a, b (fp16) and signs; None when a value is not finite or overflows fp16."""
        parts = self.parts()
        pair = fp16_pair(parts.row, parts.col)
        if pair is None:
            return None
        a, b = pair
        return dataclasses.replace(
            self.result, a=a, b=b, sign=pack_signs(parts.signs), finetuned=True
        )
