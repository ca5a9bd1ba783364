"""The JointQ method: full H per layer, GPTQ-layout results and inference layers.

JointQ needs the full H of each layer's inputs (sub-groups in turn, like
GPTQ). Its results are GPTQ grids, so the inference layer is the core's
packed integer layer with GPTQ's zero-point convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from onecomp_core.contract import LayerJob, LayerResult, Needs
from onecomp_core.kernels import PackedIntLinear, gptq_effective_bits
from torch import nn

from .config import ZERO_OFFSETS, JointQConfig
from .jointq import jointq_quantize
from .result import JointQResult


@dataclass
class JointQ(JointQConfig):
    """JointQ (see :class:`JointQConfig` for the parameters)."""

    method: ClassVar[str] = "jointq"
    result_type: ClassVar[type[LayerResult]] = JointQResult
    bits_param: ClassVar[str] = "bits"

    def needs(self) -> Needs:
        return Needs(inputs="full", sequential=True)

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        return gptq_effective_bits(self.bits, self.groupsize(), shape[1])

    def quantize_layer(self, job: LayerJob) -> JointQResult:
        hessian = job.hessian
        if hessian is None or hessian.dim() != 2:
            raise ValueError("JointQ needs the full Hessian H = (2/N)·XᵀX of the layer's inputs")
        weight = job.weight
        out = jointq_quantize(
            weight,
            hessian.to(weight.device),
            self.grid_spec(),
            groupsize=self.groupsize(),
            actorder=self.actorder,
            lam=float(self.regularization_lambda),
            mode=self.regularization_mode,
            gamma=float(self.regularization_gamma),
            percdamp=float(self.percdamp),
            row_shrinks=self.row_shrinks(),
            max_passes=self.max_passes,
            multistart=self.multistart,
            moves_per_column=self.moves_per_column,
        )
        return JointQResult(
            codes=out.codes,
            scales=out.scales,
            zeros=out.zeros,
            g_idx=out.g_idx,
            bits=self.bits,
            groupsize=self.groupsize(),
            sym=self.symmetric,
            actorder=self.actorder,
            checkpoint_format=self.checkpoint_format,
            damping=out.damping,
            passes=out.passes,
            start_error=out.start_error,
            final_error=out.final_error,
            fallback=out.fallback,
        )

    def inference_layer(self, result: JointQResult, linear: nn.Module) -> PackedIntLinear:
        return PackedIntLinear.from_codes(
            result.codes,
            result.scales,
            result.zeros,
            result.g_idx,
            result.bits,
            getattr(linear, "bias", None),
            zero_offset=ZERO_OFFSETS[result.checkpoint_format],
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> PackedIntLinear:
        fmt = row.get("checkpoint_format", "gptq")
        if fmt not in ZERO_OFFSETS:
            raise ValueError(f"checkpoint_format={fmt!r}: expected one of {sorted(ZERO_OFFSETS)}")
        return PackedIntLinear.from_row(row, zero_offset=ZERO_OFFSETS[fmt])
