"""``ARBResult``: one layer as a packed sign matrix and fp16 scales (and offsets)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp_core.contract import LayerResult
from onecomp_core.kernels import unpack_signs


def arb_bits(out_features: int, in_features: int, variant: str) -> float:
    """1 bit per weight plus fp16 α and μ per row ("arb", "x"), or fp16 row and column
    scales ("rc")."""
    if variant == "rc":
        return 1.0 + 16.0 / in_features + 16.0 / out_features
    return 1.0 + 32.0 / in_features


@dataclass
class ARBResult(LayerResult):
    """Ŵ = diag(alpha)·B·diag(col_scale) + mu·1ᵀ (``col_scale`` only for "rc", ``mu`` otherwise).

    ``signs`` is B (out × in) packed 8 per byte
    (:func:`onecomp_core.kernels.pack_signs`, bit 1 = +1); the scales are fp16.
    """

    signs: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    col_scale: torch.Tensor | None = None
    out_features: int = 0
    in_features: int = 0
    variant: str = "rc"
    arb_iters: int = 15
    split_points: int = 2
    sign_rounds: int = 0
    finetuned: bool = False

    def sign_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return unpack_signs(self.signs, self.out_features, self.in_features, dtype)

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        w = self.alpha.float()[:, None] * self.sign_matrix()
        if self.col_scale is not None:
            w = w * self.col_scale.float()[None, :]
        if self.mu is not None:
            w = w + self.mu.float()[:, None]
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        """The variant, and which optional vectors the saved layer holds (``ScaledSignLinear``)."""
        rc = self.col_scale is not None
        return {"variant": self.variant, "col_scale": rc, "row_offset": not rc}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return arb_bits(out_features, in_features, self.variant)
