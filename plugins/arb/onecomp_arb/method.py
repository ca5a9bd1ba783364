"""The ARB method: what it needs from the engine, its per-layer hook and its inference layers.

- ``needs()``: XᵀX per layer for the calibration-aware variants ("x",
  "rc"), nothing for the seed's "arb", plus the full-precision stream when
  the blocks are fine-tuned (``Needs.finetune``);
- ``quantize_layer(job)``: :func:`onecomp_arb.fit.fit_layer`, scales rounded
  to fp16, signs packed 8 per byte;
- ``inference_layer`` / ``empty_layer``: the core's
  :class:`~onecomp_core.kernels.ScaledSignLinear` (y = α ⊙ (B (c ⊙ x)) + μ·1ᵀx);
- ``trainable_layer``: :class:`~onecomp_arb.trainable.TrainableARB` for the
  engine's block fine-tuning (``finetune_steps`` > 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import FineTune, LayerJob, LayerResult, Needs, TrainableLayer
from onecomp_core.kernels import ScaledSignLinear, pack_signs

from .config import ARBConfig
from .fit import fit_layer
from .result import ARBResult, arb_bits
from .trainable import TrainableARB

logger = logging.getLogger(__name__)


@dataclass
class ARB(ARBConfig):
    """Alternating refined binarization (ARB, ARB-X, ARB-RC), 1 bit per weight."""

    method: ClassVar[str] = "arb"
    result_type: ClassVar[type[LayerResult]] = ARBResult

    def needs(self) -> Needs:
        finetune = FineTune(self.finetune_steps, self.finetune_lr) if self.fine_tunes() else None
        return Needs(inputs="full" if self.calibrated() else "none", finetune=finetune)

    @property
    def nominal_bits(self) -> float:
        """ARB stores 1 bit per weight (plus its scales: see :meth:`bits_for`)."""
        return 1.0

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        """1 + 32/in ("arb", "x"), 1 + 16/in + 16/out ("rc")."""
        return arb_bits(shape[0], shape[1], self.variant)

    def quantize_layer(self, job: LayerJob) -> ARBResult:
        weight = job.weight
        p, m = weight.shape
        hessian = job.hessian
        if hessian is None and job.input is not None and self.calibrated():
            x = job.input.reshape(-1, m).to(torch.float64)
            hessian = 2 * x.t() @ x / x.shape[0]
        if hessian is None and self.calibrated():
            logger.warning("ARB layer %r got no calibration statistics: data-free fit", job.name)
        fit = fit_layer(
            weight.detach().cpu(),
            None if hessian is None else hessian.detach().cpu(),
            self.variant,
            self.arb_iters,
            self.split_points,
            self.sign_rounds,
            self.percdamp,
        )
        return ARBResult(
            signs=pack_signs(fit.signs),
            alpha=fit.row.to(torch.float16),
            mu=None if fit.mu is None else fit.mu.to(torch.float16),
            col_scale=None if fit.col is None else fit.col.to(torch.float16),
            out_features=p,
            in_features=m,
            variant=self.variant,
            arb_iters=self.arb_iters,
            split_points=self.split_points,
            sign_rounds=self.sign_rounds if self.calibrated() else 0,
        )

    def inference_layer(self, result: ARBResult, linear: nn.Module) -> nn.Module:
        return ScaledSignLinear.from_parts(
            result.signs,
            result.alpha,
            col_scale=result.col_scale,
            row_offset=result.mu,
            bias=getattr(linear, "bias", None),
            shape=(result.out_features, result.in_features),
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        return ScaledSignLinear.from_row(row)

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableLayer | None:
        """The scaled-sign twin of an ARB layer (the block fine-tuning trains it)."""
        if not isinstance(result, ARBResult):
            return None
        return TrainableARB(result, getattr(linear, "bias", None), self.finetune_sign_lr)
