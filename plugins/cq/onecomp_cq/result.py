"""``CQResult``: one layer as packed 1-bit codes and two fp16 levels per row (or per matrix)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp_core.contract import LayerResult
from onecomp_core.kernels import unpack_signs


def cq_bits(out_features: int, in_features: int, each_row: bool = True) -> float:
    """1 bit per weight plus two fp16 levels per row (per matrix when not ``each_row``)."""
    pairs = out_features if each_row else 1
    return 1.0 + 32.0 * pairs / (out_features * in_features)


@dataclass
class CQResult(LayerResult):
    """Ŵ_ij = right_mean_i where code_ij is set, else left_mean_i.

    ``codes`` are the (out × in) codes packed 8 per byte
    (:func:`onecomp_core.kernels.pack_signs`: bit 1 = the upper level);
    ``left_mean`` / ``right_mean`` are fp16 of shape (out,), or (1,) when
    the whole matrix shares one pair (``each_row`` False).
    """

    codes: torch.Tensor | None = None
    left_mean: torch.Tensor | None = None
    right_mean: torch.Tensor | None = None
    out_features: int = 0
    in_features: int = 0
    each_row: bool = True
    weighting: str = "full"
    code_rounds: int = 0
    finetuned: bool = False

    def upper(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The codes as ±1 (+1: upper level), (out, in)."""
        return unpack_signs(self.codes, self.out_features, self.in_features, dtype)

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        lo, hi = self.left_mean.float(), self.right_mean.float()
        w = torch.where(self.upper() > 0, hi[:, None], lo[:, None])
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {"each_row": self.each_row}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return cq_bits(out_features, in_features, self.each_row)
