"""RTN: each weight rounded to the nearest point of a per-row (or per-group) uniform grid.

The built-in method, written against :mod:`onecomp_core.contract` and
:mod:`onecomp_core.kernels` only, exactly as a plugin would be: parameters
are the dataclass fields, and the hooks are ``quantize_layer``,
``inference_layer`` and ``empty_layer`` (it needs no statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..contract import LayerJob, LayerResult, Method, param
from ..kernels import GridResult, PackedIntLinear, gptq_effective_bits
from .rounding import rtn_quantize


@dataclass
class RTNResult(GridResult):
    """Codes (out, in) uint8, scales (out, groups) fp16, zero points (out, groups) uint8."""


@dataclass
class RTN(Method):
    """Round-to-nearest on GPTQ's grid and checkpoint layout (saved keys follow GPTQ's)."""

    method: ClassVar[str] = "rtn"
    result_type: ClassVar[type[LayerResult]] = RTNResult
    bits_param: ClassVar[str] = "wbits"

    wbits: int = param(4, int, ge=2, le=8, disk="bits", doc="bits per weight")
    groupsize: int = param(
        -1, int, ge=1, special=(-1,), disk="group_size", doc="inputs per grid; -1: one per row"
    )
    sym: bool = param(True, doc="symmetric grid (zero point in the middle)")

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        return gptq_effective_bits(self.wbits, self.groupsize, shape[1])

    def quantize_layer(self, job: LayerJob) -> RTNResult:
        codes, scales, zeros = rtn_quantize(job.weight, self.wbits, self.groupsize, self.sym)
        return RTNResult(
            codes=codes,
            scales=scales,
            zeros=zeros,
            bits=self.wbits,
            groupsize=self.groupsize,
            sym=self.sym,
        )

    def inference_layer(self, result: RTNResult, linear: nn.Module) -> PackedIntLinear:
        bias = getattr(linear, "bias", None)
        return PackedIntLinear.from_codes(
            result.codes, result.scales, result.zeros, result.groups(), result.bits, bias
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> PackedIntLinear:
        return PackedIntLinear.from_row(row)
