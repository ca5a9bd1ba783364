"""The QBB method: what it needs from the engine, its per-layer hook, its inference layers.

- ``needs()``: the full H = (2/N)·XᵀX with ``weighting="activation"`` (the
  default), nothing with ``"none"`` (the reference's data-free fit);
- ``quantize_layer(job)``: fit the bases (:mod:`onecomp_qbb.bases`), pack
  the signs 1 bit each;
- ``trainable_layer``: the twin of the engine's block fine-tuning
  (``finetune_steps`` > 0, the default; 0 gives the layer-wise result);
- ``inference_layer`` / ``empty_layer``: :class:`~onecomp_qbb.layer.BinaryBasesLinear`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import FineTune, LayerJob, LayerResult, Needs, TrainableLayer
from onecomp_core.kernels import pack_signs

from .bases import fit_bases, fit_bases_hessian, progressive_target
from .config import QBBConfig
from .layer import BinaryBasesLinear
from .result import QBBResult, qbb_bits
from .trainable import QBBTwin

logger = logging.getLogger(__name__)


@dataclass
class QBB(QBBConfig):
    """Quantization with Binary Bases, exact scales, sign updates that flip, H-aware."""

    method: ClassVar[str] = "qbb"
    result_type: ClassVar[type[LayerResult]] = QBBResult
    bits_param: ClassVar[str] = "wbits"

    def needs(self) -> Needs:
        """H for the activation-aware fit; the engine's block fine-tuning when it is on."""
        finetune = FineTune(self.finetune_steps, self.finetune_lr, seed=self.seed)
        return Needs(
            inputs="full" if self.weighting == "activation" else "none",
            finetune=finetune if self.fine_tunes() else None,
        )

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableLayer | None:
        """The twin the engine fine-tunes: scales (and, with a sign rate, the signs)."""
        if not isinstance(result, QBBResult):
            return None
        return QBBTwin(result, getattr(linear, "bias", None), self.finetune_sign_lr, self.ste_type)

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        """What :meth:`QBBResult.effective_bits` reports for an (out, in) layer."""
        return qbb_bits(self.wbits, shape[0])

    def quantize_layer(self, job: LayerJob) -> QBBResult:
        weight = job.weight.detach().float().cpu()
        p, m = weight.shape
        if self.use_progressive_quantization:
            weight = progressive_target(weight, self.progressive_bits)
        hessian = job.hessian
        if hessian is None and job.input is not None:
            x = job.input.reshape(-1, job.input.shape[-1]).float()
            hessian = 2 * x.t() @ x / x.shape[0]
        aware = self.weighting == "activation" and hessian is not None and hessian.dim() == 2
        if self.weighting == "activation" and not aware:
            logger.warning("QBB layer %r got no input statistics: data-free fit", job.name)
        with torch.no_grad():
            if aware:
                signs, scales = fit_bases_hessian(
                    weight, hessian.detach().float().cpu(), self.wbits,
                    self.iters_per_basis, self.damp,
                )  # fmt: skip
            else:
                signs, scales = fit_bases(weight, self.wbits, self.iters_per_basis)
        return QBBResult(
            signs=torch.stack([pack_signs(s) for s in signs]),
            alphas=scales.to(torch.float16),
            out_features=p,
            in_features=m,
            wbits=self.wbits,
            weighting="activation" if aware else "none",
        )

    def inference_layer(self, result: QBBResult, linear: nn.Module) -> nn.Module:
        return BinaryBasesLinear.from_parts(
            result.signs, result.alphas, result.out_features, getattr(linear, "bias", None)
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        return BinaryBasesLinear(
            row["in_features"], row["out_features"], row["bases"], bool(row.get("bias", False))
        )
