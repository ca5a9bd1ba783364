"""The ``ternary`` method: its parameter, its result and its hooks — a complete plugin method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import LayerJob, LayerResult, Method, param

from .layer import TernaryLinear
from .ternary import dequantize, ternarize


@dataclass
class TernaryResult(LayerResult):
    """Signs (out, in) int8 in {-1, 0, 1} and one fp16 scale per row: tensors only, no pickle."""

    signs: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        return dequantize(self.signs, self.scales).to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {"bits": 2}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return 2 + 16 / in_features


@dataclass
class Ternary(Method):
    """Ternary weights per output row; the default ``needs()``: no calibration at all."""

    method: ClassVar[str] = "ternary"
    result_type: ClassVar[type[LayerResult]] = TernaryResult
    threshold_ratio: float = param(0.7, ge=0, lt=10, doc="0 where |w| <= ratio·mean|w| of row")

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        return TernaryResult().effective_bits(*shape)

    def quantize_layer(self, job: LayerJob) -> TernaryResult:
        signs, scales = ternarize(job.weight, self.threshold_ratio)
        return TernaryResult(signs=signs, scales=scales)

    def inference_layer(self, result: TernaryResult, linear: nn.Module) -> TernaryLinear:
        return TernaryLinear.from_signs(result.signs, result.scales, getattr(linear, "bias", None))

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> TernaryLinear:
        return TernaryLinear(row["in_features"], row["out_features"], row.get("bias", False))
