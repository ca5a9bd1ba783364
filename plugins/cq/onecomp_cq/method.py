"""The CQ method: what it needs from the engine, its per-layer hook and its inference layers.

- ``needs()``: XᵀX per layer for ``weighting="full"``, its diagonal for
  "diag", nothing for "none" (the seed's data-free CQ), plus block
  fine-tuning (``Needs.finetune``) when ``finetune_steps`` > 0;
- ``quantize_layer(job)``: :func:`onecomp_cq.fit.fit_layer`, levels rounded
  to fp16, codes packed 8 per byte;
- ``inference_layer`` / ``empty_layer``: :class:`~onecomp_cq.layer.ClusterLinear`;
- ``trainable_layer``: :class:`~onecomp_cq.trainable.TrainableCQ` for the
  engine's block fine-tuning (``finetune_steps`` > 0; per-row levels only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import FineTune, LayerJob, LayerResult, Needs, TrainableLayer
from onecomp_core.kernels import pack_signs

from .config import CQConfig
from .fit import fit_layer
from .layer import ClusterLinear
from .result import CQResult, cq_bits
from .trainable import TrainableCQ

logger = logging.getLogger(__name__)


@dataclass
class CQ(CQConfig):
    """Clustering quantization (1 bit + two fp16 levels per row), calibration-aware."""

    method: ClassVar[str] = "cq"
    result_type: ClassVar[type[LayerResult]] = CQResult

    def needs(self) -> Needs:
        inputs = {"full": "full", "diag": "diag", "none": "none"}[self.weighting]
        finetune = FineTune(self.finetune_steps, self.finetune_lr) if self.fine_tunes() else None
        return Needs(inputs=inputs, finetune=finetune)

    @property
    def nominal_bits(self) -> float:
        """CQ stores 1 bit per weight (plus its levels: see :meth:`bits_for`)."""
        return 1.0

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        """1 + 32/in per row-pair (1 + 32/(out·in) for one pair per matrix)."""
        return cq_bits(shape[0], shape[1], self.each_row)

    def quantize_layer(self, job: LayerJob) -> CQResult:
        weight = job.weight
        p, m = weight.shape
        hessian = job.hessian
        if hessian is None and job.input is not None and self.weighting != "none":
            x = job.input.reshape(-1, m).to(torch.float64)
            hessian = 2 * x.t() @ x / x.shape[0]
        if hessian is None and self.weighting != "none":
            logger.warning("CQ layer %r got no calibration statistics: data-free fit", job.name)
        levels = fit_layer(
            weight.detach().cpu(),
            None if hessian is None else hessian.detach().cpu(),
            self.weighting,
            self.each_row,
            self.code_rounds,
            self.percdamp,
        )
        pairs = slice(None) if self.each_row else slice(0, 1)
        return CQResult(
            codes=pack_signs(levels.codes.to(torch.float32) * 2 - 1),
            left_mean=levels.left[pairs].to(torch.float16),
            right_mean=levels.right[pairs].to(torch.float16),
            out_features=p,
            in_features=m,
            each_row=self.each_row,
            weighting=self.weighting,
            code_rounds=self.code_rounds,
        )

    def inference_layer(self, result: CQResult, linear: nn.Module) -> nn.Module:
        shape = (result.out_features, result.in_features)
        bias = getattr(linear, "bias", None)
        return ClusterLinear.from_parts(
            result.codes, result.left_mean, result.right_mean, shape, bias
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        return ClusterLinear(
            row["in_features"],
            row["out_features"],
            bool(row.get("each_row", True)),
            bool(row.get("bias", False)),
        )

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableLayer | None:
        """The scaled-sign twin of a CQ layer with per-row levels (one pair per matrix: none)."""
        if not isinstance(result, CQResult) or not result.each_row:
            return None
        return TrainableCQ(result, getattr(linear, "bias", None), self.finetune_sign_lr)
