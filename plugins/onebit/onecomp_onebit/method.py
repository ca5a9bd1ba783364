"""``Onebit``: the seed's OneBit quantizer as a onecomp method, with the balancing fix.

Per layer (:func:`~onecomp_onebit.svid.svid`): S = sign(W) and a rank-1 fit
a bᵀ ≈ |W| (balanced or importance-scaled first, then folded back), stored
as packed signs and fp16 a, b (1 + 16(p+m)/(pm) bits). Then, per block, the
engine's block fine-tuning trains a and b (``finetune_steps`` > 0, the
default) so the block's output matches the full-precision block's
(:class:`~onecomp_onebit.twin.OneBitTwin`). Inference and storage use the
core's :class:`~onecomp_core.kernels.ScaledSignLinear` (1 bit per sign).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import FineTune, LayerJob, LayerResult, Method, Needs, param
from onecomp_core.kernels import ScaledSignLinear, pack_signs

from .refine import hessian_signs, refit_scales
from .result import OneBitResult, fp16_pair, onebit_bits
from .svid import svid
from .twin import OneBitTwin

logger = logging.getLogger(__name__)

REFINES = ("none", "scales", "signs+scales")


@dataclass
class Onebit(Method):
    """OneBit (Xu et al. 2024): W ≈ diag(a)·sign(W)·diag(b), SVID init, block fine-tuned."""

    method: ClassVar[str] = "onebit"
    result_type: ClassVar[type[LayerResult]] = OneBitResult

    # the seed's parameters and defaults
    iters: int = param(10, ge=1, doc="power iterations of the rank-1 fit (at least 30 are run)")
    use_importance_scaling: bool = param(
        True, doc="scale columns by √diag H before the fit (only without balancing)"
    )
    use_balancing: bool = param(True, doc="Sinkhorn-ℓ1 balance |W| before the fit (folded back)")
    balance_iters: int = param(40, ge=1, doc="Sinkhorn iterations")
    balance_alpha: float = param(1.0, gt=0, doc="target row ℓ1 norm of the balanced |W|")
    # added: calibration-aware refinement of the SVID (README: measured)
    refine: str = param(
        "signs+scales",
        choices=REFINES,
        doc="after SVID, against the output error: none, scales (LS a, b), signs+scales",
    )
    percdamp: float = param(0.01, gt=0, doc="damping of H in the refinement (× mean diag)")
    # block fine-tuning (the engine's), on by default
    finetune_steps: int = param(200, ge=0, doc="block-wise Adam steps on a, b; 0 = layer-wise")
    finetune_lr: float = param(1e-2, gt=0, doc="Adam learning rate (relative change of a, b)")
    finetune_sign_lr: float = param(
        0.0, ge=0, doc="learning rate of straight-through sign latents; 0 = signs fixed"
    )
    seed: int = param(0, doc="seed of the power iteration and of the fine-tuning's batch order")

    def problems(self) -> list[str]:
        """Every invalid parameter (the balancing knobs only while balancing is on)."""
        found = super().problems()
        if self.use_balancing:
            return found
        return [p for p in found if p.partition("=")[0] not in ("balance_iters", "balance_alpha")]

    # -- what the method needs ----------------------------------------------------------------
    def _importance(self) -> bool:
        return self.use_importance_scaling and not self.use_balancing

    def needs(self) -> Needs:
        finetune = FineTune(self.finetune_steps, self.finetune_lr, seed=self.seed)
        inputs = "full" if self.refine != "none" else "diag" if self._importance() else "none"
        return Needs(
            inputs=inputs,
            finetune=finetune if finetune.active else None,
        )

    # -- bits -----------------------------------------------------------------------------
    @property
    def nominal_bits(self) -> float:
        """One bit per weight (the signs; ``bits_for`` adds the two fp16 vectors)."""
        return 1.0

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        return onebit_bits(*shape)

    # -- the per-layer hooks ----------------------------------------------------------------
    def quantize_layer(self, job: LayerJob) -> OneBitResult:
        weight = job.weight
        p, m = weight.shape
        importance = None
        if self._importance():
            importance = self._column_importance(job, m)
        fit = svid(
            weight.detach().cpu(),
            use_balancing=self.use_balancing,
            balance_iters=self.balance_iters,
            balance_alpha=self.balance_alpha,
            importance=importance,
            iters=self.iters,
            seed=self.seed + zlib.crc32(job.name.encode()),
        )
        a, signs, b = fit.a, fit.signs, fit.b
        h = job.hessian
        if self.refine != "none" and h is not None and h.dim() == 2:
            w, h = weight.detach().cpu().float(), h.detach().cpu()
            if self.refine == "signs+scales":
                signs = hessian_signs(w, a, b, h, self.percdamp)
            a, b = refit_scales(w, signs, a, b, h, damp=self.percdamp)
        elif self.refine != "none":
            logger.warning("OneBit layer %r: no full input statistics, not refined", job.name)
        pair = fp16_pair(a, b)
        if pair is None:
            raise FloatingPointError(f"OneBit: non-finite scales on layer {job.name!r}")
        a, b = pair
        return OneBitResult(
            a=a,
            sign=pack_signs(signs),
            b=b,
            out_features=p,
            in_features=m,
            use_balancing=self.use_balancing,
            use_importance_scaling=self.use_importance_scaling,
            refine=self.refine if h is not None and h.dim() == 2 else "none",
        )

    @staticmethod
    def _column_importance(job: LayerJob, in_features: int) -> torch.Tensor | None:
        """√diag H per input column, or None without statistics."""
        h = job.hessian
        if h is None and job.input is not None:
            x = job.input.reshape(-1, in_features).float()
            h = 2 * x.pow(2).mean(0)
        if h is None:
            return None
        diag = h.diagonal() if h.dim() == 2 else h
        return diag.detach().float().cpu().clamp_min(0).sqrt()

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> OneBitTwin | None:
        if not isinstance(result, OneBitResult):
            return None
        return OneBitTwin(result, getattr(linear, "bias", None), self.finetune_sign_lr)

    def inference_layer(self, result: OneBitResult, linear: nn.Module) -> nn.Module:
        return ScaledSignLinear.from_parts(
            result.sign,
            result.a,
            result.b,
            bias=getattr(linear, "bias", None),
            shape=(result.out_features, result.in_features),
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        return ScaledSignLinear.from_row(row)
