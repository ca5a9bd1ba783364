"""RTN: each weight rounded to the nearest point of a per-row (or per-group) uniform grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..grid import (
    dequantize_codes,
    gptq_effective_bits,
    grid_params,
    group_index,
    quantize_codes,
)
from ..packed_linear import PackedIntLinear
from ..quantizer import Quantizer
from ..result import QuantizationResult


@dataclass
class RTNResult(QuantizationResult):
    """Codes (out, in) uint8, scales (out, groups) fp16, zero points (out, groups) uint8."""

    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    bits: int = 4
    groupsize: int = -1
    sym: bool = True

    def compute_dequantized_weight(self, device=None) -> torch.Tensor:
        g = group_index(self.codes.shape[1], self.groupsize).long()
        scale = self.scales.float()[:, g]
        zero = self.zeros.float()[:, g]
        w = scale * (self.codes.float() - zero)
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "groupsize": self.groupsize, "sym": self.sym}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return gptq_effective_bits(self.bits, self.groupsize, in_features)


def rtn_quantize(
    weight: torch.Tensor, bits: int, groupsize: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 (out, in), scales fp16 (out, groups), zeros uint8 (out, groups))."""
    w = weight.float()
    size = w.shape[1] if groupsize == -1 else groupsize
    codes, scales, zeros = [], [], []
    for start in range(0, w.shape[1], size):
        block = w[:, start : start + size]
        scale, zero = grid_params(block, bits, sym)
        codes.append(quantize_codes(block, scale, zero, bits))
        scales.append(scale)
        zeros.append(zero)
    return (
        torch.cat(codes, dim=1).to(torch.uint8),
        torch.stack(scales, dim=1).to(torch.float16),
        torch.stack(zeros, dim=1).to(torch.uint8),
    )


@dataclass
class RTN(Quantizer):
    method: ClassVar[str] = "rtn"
    result_type: ClassVar[type[QuantizationResult]] = RTNResult

    wbits: int = 4
    groupsize: int = -1
    sym: bool = True
    flag_calibration: bool = False
    flag_hessian: bool = False

    def param_problems(self) -> list[str]:
        problems = super().param_problems()
        if not isinstance(self.wbits, int) or not 2 <= self.wbits <= 8:
            problems.append(f"wbits={self.wbits!r}: expected an integer from 2 to 8")
        if not isinstance(self.groupsize, int) or not (self.groupsize == -1 or self.groupsize >= 1):
            problems.append(
                f"groupsize={self.groupsize!r}: expected -1 (per row) or an integer >= 1"
            )
        if not isinstance(self.sym, bool):
            problems.append(f"sym={self.sym!r}: expected true or false")
        return problems

    def quantize_layer(self, module: nn.Module, input=None, hessian=None) -> RTNResult:
        codes, scales, zeros = rtn_quantize(
            module.weight.data, self.wbits, self.groupsize, self.sym
        )
        return RTNResult(
            codes=codes,
            scales=scales,
            zeros=zeros,
            bits=self.wbits,
            groupsize=self.groupsize,
            sym=self.sym,
        )

    def get_quant_config(self) -> dict[str, Any]:
        return {"bits": self.wbits, "group_size": self.groupsize, "sym": self.sym}

    @classmethod
    def from_quant_config(cls, config: dict[str, Any]) -> RTN:
        """Inverse of :meth:`get_quant_config`, whose keys follow the GPTQ checkpoint names."""
        renamed = {"bits": "wbits", "group_size": "groupsize"}
        return super().from_quant_config({renamed.get(k, k): v for k, v in config.items()})

    def create_inference_layer(
        self, result: RTNResult, linear_module: nn.Module, **kwargs: Any
    ) -> PackedIntLinear:
        g_idx = group_index(result.codes.shape[1], result.groupsize)
        bias = getattr(linear_module, "bias", None)
        return PackedIntLinear.from_codes(
            result.codes, result.scales, result.zeros, g_idx, result.bits, bias
        )

    @classmethod
    def build_inference_layer(cls, row: dict[str, Any]) -> PackedIntLinear:
        return PackedIntLinear.empty(
            row["in_features"],
            row["out_features"],
            row["bits"],
            row["groupsize"],
            row.get("bias", False),
        )


__all__ = ["RTN", "RTNResult", "rtn_quantize", "dequantize_codes"]
