"""The MDBF method: what it needs from the engine, its per-layer hook, its inference layers.

- ``needs()``: the full H = (2/N)·XᵀX when ``activation_aware`` (our default)
  or ``svd_mode="svd_llm"``; nothing otherwise (the reference's weight-error fit);
- ``quantize_layer(job)``: the fit of :mod:`onecomp_mdbf.factorization`
  (a dense fallback when it is not finite), signs packed 1 bit each;
- ``trainable_layer``: the twin of the engine's block fine-tuning
  (``finetune_steps`` > 0, the default; 0 gives the layer-wise result);
- ``prepare`` / ``on_block_done`` / ``on_model_done``: the model-level
  distillation of the twins after the last block (``distill_steps``; the
  core's streamed :class:`~onecomp_core.kernels.distill.Distiller`);
- ``inference_layer`` / ``empty_layer``: :class:`~onecomp_mdbf.layer.MultipathMDBFLinear`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import (
    BlockView,
    FineTune,
    LayerJob,
    LayerResult,
    Needs,
    RunView,
    TrainableLayer,
)
from onecomp_core.kernels import Distiller, pack_signs

from .config import MDBFConfig
from .envelope import mdbf_bits, rank_for
from .factorization import FitSettings, factorize
from .layer import MultipathMDBFLinear
from .objective import activation_scales, input_correlation
from .refine import gradient_refine
from .result import MDBFResult
from .trainable import MDBFTwin

logger = logging.getLogger(__name__)


@dataclass
class MDBF(MDBFConfig):
    """Multi-envelope double binary factorization, activation-aware, with block fine-tuning."""

    method: ClassVar[str] = "mdbf"
    result_type: ClassVar[type[LayerResult]] = MDBFResult
    bits_param: ClassVar[str] = "target_bits"

    #: the model-level distillation's state between ``prepare`` and ``on_model_done``
    _distiller: Distiller | None = field(default=None, init=False, repr=False, compare=False)

    def _uses_hessian(self) -> bool:
        return self.activation_aware or self.svd_mode == "svd_llm"

    def needs(self) -> Needs:
        """H for the activation-aware fit; block fine-tuning and the model pass when on."""
        finetune = FineTune(self.finetune_steps, self.finetune_lr, seed=self.layer_seed(""))
        distils = self.resolved_distill_steps() > 0
        if self._distiller is not None and self._distiller.prepared:
            distils = distils and self._distiller.active
        return Needs(
            inputs="full" if self._uses_hessian() else "none",
            finetune=finetune if self.fine_tunes() else None,
            fp_stream=distils,
            model_pass=distils,
        )

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableLayer | None:
        """The twin the engine fine-tunes: envelopes (and, with a sign rate, the signs)."""
        return self._twin(result, linear, self.finetune_sign_lr)

    def _twin(self, result: LayerResult, linear: nn.Module, sign_lr: float) -> MDBFTwin | None:
        if not isinstance(result, MDBFResult) or not result.is_quantized:
            return None
        return MDBFTwin(result, getattr(linear, "bias", None), sign_lr)

    # -- model-level distillation (the core's streamed Distiller) --------------------------
    def prepare(self, view: RunView) -> None:
        self._distiller = Distiller()
        self._distiller.prepare(view, self.resolved_distill_steps() > 0)

    def on_block_done(self, view: BlockView) -> dict[str, LayerResult]:
        if self._distiller is not None:
            self._distiller.on_block_done(view)
        return {}

    def on_model_done(self, view: RunView) -> dict[str, LayerResult]:
        distiller, self._distiller = self._distiller, None
        if distiller is None:
            return {}
        return distiller.on_model_done(
            view,
            lambda result, linear: self._twin(result, linear, self.distill_sign_lr),
            self.resolved_distill_steps(),
            self.distill_lr,
            self.layer_seed("distill"),
        )

    def layer_rank(self, shape: tuple[int, int], name: str) -> int:
        return rank_for(
            shape[0], shape[1], self.layer_bits(name), self.l, self.P, self.budget, self.scale_bits
        )

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        """What :meth:`MDBFResult.effective_bits` reports for an (out, in) layer ``name``."""
        return mdbf_bits(shape[0], shape[1], self.layer_rank(shape, name), self.l, self.P)

    def quantize_layer(self, job: LayerJob) -> MDBFResult:
        weight = job.weight
        p, m = weight.shape
        rank = self.layer_rank((p, m), job.name)
        meta = dict(
            out_features=p, in_features=m, rank=rank, envelopes=self.l, paths=self.P,
            target_bits=self.layer_bits(job.name), budget=self.budget,
            dense_dtype=str(weight.dtype).removeprefix("torch."),
        )  # fmt: skip
        hessian = job.hessian
        if hessian is None and job.input is not None:
            x = job.input.reshape(-1, job.input.shape[-1]).float()
            hessian = 2 * x.t() @ x / x.shape[0]
        full = hessian is not None and hessian.dim() == 2
        if self._uses_hessian() and not full:
            logger.warning("MDBF layer %r got no input statistics: weight-error fit", job.name)
        aware = self.activation_aware and full
        scales = activation_scales(hessian.diagonal()) if aware else None
        whiten = full and (self.act_init != "none" if aware else self.svd_mode == "svd_llm")
        corr = None
        if whiten:
            s = scales if aware else activation_scales(hessian.diagonal())
            corr = input_correlation(hessian, s, self.hessian_damp)
        settings = FitSettings(
            rank=rank, envelopes=self.l, paths=self.P,
            outer=self.admm_outer_iters if self.use_admm else 0,
            inner=self.admm_inner_iters, reg=self.admm_reg, seed=self.layer_seed(job.name),
        )  # fmt: skip
        try:
            paths = factorize(
                weight, settings, scales, corr if aware else None, init_correlation=corr
            )
            if self.use_gradient_refine:
                paths = gradient_refine(
                    weight, paths, scales, corr if aware else None,
                    self.gradient_iters, self.gradient_lr,
                )  # fmt: skip
            parts = _stack(paths)
            if not all(torch.isfinite(v).all() for k, v in parts.items() if k.startswith("env")):
                raise FloatingPointError("non-finite envelopes")
        except (FloatingPointError, RuntimeError) as exc:
            logger.warning("MDBF failed on layer %r (%s); it stays dense", job.name, exc)
            return MDBFResult(
                dequantized_weight=weight.detach().cpu().clone(),
                is_quantized=False,
                fallback=f"dense: {exc}",
                activation_aware=aware,
                **meta,
            )
        return MDBFResult(**parts, activation_aware=aware, **meta)

    def inference_layer(self, result: MDBFResult, linear: nn.Module) -> nn.Module:
        bias = getattr(linear, "bias", None)
        if not result.is_quantized:
            layer = nn.Linear(result.in_features, result.out_features, bias=bias is not None)
            layer.to(linear.weight.dtype)
            layer.weight.data.copy_(result.dequantized_weight)
            if bias is not None:
                layer.bias.data.copy_(bias.detach())
            return layer
        parts = {
            k: getattr(result, k)
            for k in ("sign_a", "sign_b", "env_a", "env_qu", "env_qv", "env_b")
        }
        return MultipathMDBFLinear.from_parts(parts, bias)

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        has_bias = bool(row.get("bias", False))
        if not row.get("is_quantized", True):
            dtype = getattr(torch, row.get("dense_dtype", "float16"))
            return nn.Linear(row["in_features"], row["out_features"], bias=has_bias, dtype=dtype)
        return MultipathMDBFLinear(
            row["in_features"], row["out_features"], row["rank"], row["envelopes"],
            row["paths"], has_bias,
        )  # fmt: skip


def _stack(paths) -> dict[str, torch.Tensor]:
    """The result's six tensors: packed signs per path, fp16 envelopes stacked over paths."""
    return {
        "sign_a": torch.stack([pack_signs(p.sign_a) for p in paths]),
        "sign_b": torch.stack([pack_signs(p.sign_b) for p in paths]),
        "env_a": torch.stack([p.env_a for p in paths]).to(torch.float16),
        "env_qu": torch.stack([p.env_qu for p in paths]).to(torch.float16),
        "env_qv": torch.stack([p.env_qv for p in paths]).to(torch.float16),
        "env_b": torch.stack([p.env_b for p in paths]).to(torch.float16),
    }
