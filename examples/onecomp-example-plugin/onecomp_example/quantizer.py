"""The ``ternary`` method: its result type and the three hooks of the Quantizer contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core import QuantizationResult, Quantizer

from .layer import TernaryLinear
from .ternary import dequantize, ternarize


@dataclass
class TernaryResult(QuantizationResult):
    """Signs (out, in) int8 in {-1, 0, 1} and one fp16 scale per output row.

    Only tensors and JSON values, so onecomp stores it as safetensors + JSON.
    """

    signs: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    def compute_dequantized_weight(self, device=None) -> torch.Tensor:
        return dequantize(self.signs, self.scales).to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {"bits": 2}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return 2 + 16 / in_features


@dataclass
class Ternary(Quantizer):
    """Ternary weights per output row; needs no calibration data."""

    method: ClassVar[str] = "ternary"
    result_type: ClassVar[type[QuantizationResult]] = TernaryResult

    #: weights with |w| <= threshold_ratio · mean|w| of their row become 0
    threshold_ratio: float = 0.7
    flag_calibration: bool = False
    flag_hessian: bool = False

    def param_problems(self) -> list[str]:
        problems = super().param_problems()
        ratio = self.threshold_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 10:
            problems.append(f"threshold_ratio={ratio!r}: expected a number in [0, 10)")
        return problems

    def quantize_layer(self, module: nn.Module, input=None, hessian=None) -> TernaryResult:
        signs, scales = ternarize(module.weight.data, self.threshold_ratio)
        return TernaryResult(signs=signs, scales=scales)

    def get_quant_config(self) -> dict[str, Any]:
        return {"threshold_ratio": self.threshold_ratio}

    def create_inference_layer(
        self, result: TernaryResult, linear_module: nn.Module, **kwargs: Any
    ) -> TernaryLinear:
        return TernaryLinear.from_signs(
            result.signs, result.scales, getattr(linear_module, "bias", None)
        )

    @classmethod
    def build_inference_layer(cls, row: dict[str, Any]) -> TernaryLinear:
        return TernaryLinear(row["in_features"], row["out_features"], row.get("bias", False))
