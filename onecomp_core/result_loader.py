"""``ResultLoader``: a quantizer that only replays results saved by an earlier run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from .quantizer import Quantizer
from .result import QuantizationResult


@dataclass
class ResultLoader(Quantizer):
    """Holds results loaded from disk; selects no layers and refuses to quantize.

    Use it to rebuild a dequantized or packed model from
    ``save_quantization_results`` output without running the method again.
    """

    method: ClassVar[str] = "result_loader"
    results_path: str | None = None
    flag_calibration: bool = False
    flag_hessian: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.results_path is not None:
            self.load_results(Path(self.results_path))

    def setup(self, model: nn.Module) -> dict[str, nn.Module]:
        return {}

    def quantize_layer(self, module, input=None, hessian=None) -> QuantizationResult:
        raise RuntimeError("ResultLoader only replays saved results; it cannot quantize")

    def get_quant_config(self) -> dict[str, Any]:
        return {"results_path": self.results_path}

    def create_inference_layer(
        self, result: QuantizationResult, linear_module: nn.Module, **kwargs: Any
    ) -> nn.Module:
        from .plugins import get_quantizer

        return get_quantizer(result._method)().create_inference_layer(
            result, linear_module, **kwargs
        )
