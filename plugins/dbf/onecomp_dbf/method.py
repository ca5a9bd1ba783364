"""The DBF method: what it needs from the engine, its per-layer hook and its lifecycle hooks.

- ``needs()``: H = (2/N)·XᵀX (its diagonal with ``flag_hessian=False``,
  nothing with ``weighting="none"``), output-gradient moments for
  ``weighting="activation_gradient"``, the full-precision stream for block
  fine-tuning, a model pass for the distillation;
- ``quantize_layer(job)``: the weighted fit of one layer (a dense fallback
  when it is not finite);
- ``trainable_layer(result, linear)``: the twin the engine's block
  fine-tuning trains (``Needs.finetune``; :class:`~onecomp_dbf.trainable.TrainableDBF`);
- the last block's ``on_block_done`` keeps the full-precision stream after
  the last block as the teacher, and ``on_model_done(view)`` distils every
  DBF layer against it through the engine's block walk
  (:mod:`onecomp_dbf.distill`): never the whole model on one device.

The hooks return new results; the engine writes their weights back.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from onecomp_core.contract import (
    BlockView,
    FineTune,
    GradientMoments,
    LayerJob,
    LayerResult,
    Needs,
    RunView,
)
from onecomp_core.kernels import OnDisk, pack_signs

from .config import DBFConfig
from .distill import Teacher, distill_model
from .factorization import factorize
from .factors import middle_dim, total_bits
from .layer import DoubleBinaryLinear, dense_layer
from .objective import activation_scales, gradient_scales, input_correlation
from .refit import refit_vectors_hessian
from .result import DBFResult
from .samples import last_hidden, resident, sample_sequences, sample_with_cache
from .trainable import SIGN_STATE_PER_SIGN, TrainableDBF

logger = logging.getLogger(__name__)

#: the parameters a result records: its fields that are parameters (``target_bits`` per layer)
RECORDED = tuple(f.name for f in dataclasses.fields(DBFResult) if f.name in DBFConfig.parameters())


@dataclass
class DBF(DBFConfig):
    """Double Binary Factorization, activation-weighted, with block fine-tuning and distillation."""

    method: ClassVar[str] = "dbf"
    result_type: ClassVar[type[LayerResult]] = DBFResult
    bits_param: ClassVar[str] = "target_bits"

    #: the full-precision stream after the last block, from its ``on_block_done`` until
    #: ``on_model_done``
    _teacher: Teacher | None = field(default=None, init=False, repr=False, compare=False)
    #: blocks of the run (from ``prepare``); None: no block walk, so no distillation
    _blocks: int | None = field(default=None, init=False, repr=False, compare=False)
    _prepared: bool = field(default=False, init=False, repr=False, compare=False)
    #: text the full-precision model sampled itself in ``prepare`` and its teacher outputs
    _sampled: tuple[list, Teacher] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: the block fine-tuning keeps the signs fixed: a block's sign training would take more
    #: than ``sign_state_mb`` (decided in ``prepare`` from the model's shapes)
    _fixed_signs: bool = field(default=False, init=False, repr=False, compare=False)

    def needs(self) -> Needs:
        """After ``prepare``, a model pass only if the run can distil (a walk with a head)."""
        inputs = "none" if self.weighting == "none" else "full" if self.flag_hessian else "diag"
        gradients = GradientMoments() if self.weighting == "activation_gradient" else None
        distils = self._distils()
        return Needs(
            inputs=inputs,
            moments=gradients,
            fp_stream=self.fine_tunes() or distils,
            model_pass=distils,
            finetune=self._finetune(),
        )

    def _finetune(self) -> FineTune | None:
        """The engine's block fine-tuning of the vectors (None with ``finetune_steps=0``)."""
        if not self.fine_tunes():
            return None
        return FineTune(self.finetune_steps, self.finetune_lr, seed=self.seed)

    def _distils(self) -> bool:
        if self.resolved_distill_steps() <= 0:
            return False
        return self._blocks is not None if self._prepared else True

    # -- bits ---------------------------------------------------------------------------
    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        """What :meth:`DBFResult.effective_bits` reports for a fitted (out, in) layer ``name``."""
        n, m = shape
        return total_bits(n, m, middle_dim(n, m, self.layer_bits(name), self.clamp_k))

    # -- the per-layer hooks --------------------------------------------------------------
    def quantize_layer(self, job: LayerJob) -> DBFResult:
        hessian = job.hessian
        full = hessian is not None and hessian.dim() == 2 and self.weighting != "none"
        # handed over with H: the fit sets it aside while it holds C's eigenbasis
        weight = job.take_weight() if full and job.hands_over else job.weight
        n, m = weight.shape
        bits = self.layer_bits(job.name)
        k = middle_dim(n, m, bits, self.clamp_k)
        meta = {name: getattr(self, name) for name in RECORDED}
        meta.update(
            target_bits=bits,
            out_features=n,
            in_features=m,
            mid_features=k,
            dense_dtype=str(weight.dtype).removeprefix("torch."),
        )
        col, row = self._scales(job, m)
        if full:  # handed on when the engine hands it over: the refit damps it in place
            hessian = [job.take_hessian()] if job.hands_over else hessian
        try:
            corr = None
            if full and self.hessian_admm:  # C handed over to the fit, freed once decomposed
                source = hessian[0] if isinstance(hessian, list) else hessian
                corr = [input_correlation(source, col, self.hessian_damp)]
                del source
            # a handed-over H and W wait on disk while the fit holds C's eigenbasis (exact;
            # the fit reads W when it makes its target and again for its refit)
            parked = corr is not None and isinstance(hessian, list) and OnDisk.supports(hessian[0])
            if parked:
                hessian, weight = OnDisk(hessian.pop()), OnDisk(weight)
            factors = factorize(
                weight,
                k,
                self.fit_settings(job.name),
                col_scale=col,
                row_scale=row,
                correlation=corr,
            )
            if parked:  # W stays on disk: the refit reads it once, for W·H
                hessian = [hessian.take()]
            if full:
                factors = refit_vectors_hessian(weight, hessian, factors)
            factors = factors.cpu()
            a, c, b = (v.to(torch.float16) for v in (factors.a, factors.c, factors.b))
            if not all(torch.isfinite(v).all() for v in (a, c, b)):
                raise FloatingPointError("non-finite scale vectors")
        except (FloatingPointError, RuntimeError) as exc:  # LinAlgError is a RuntimeError
            logger.warning("DBF failed on layer %r (%s); it stays dense", job.name, exc)
            weight = weight.take() if isinstance(weight, OnDisk) else weight
            return DBFResult(
                dequantized_weight=weight.detach().cpu().clone(),
                is_dbf_quantized=False,
                fallback=f"dense: {exc}",
                **meta,
            )
        return DBFResult(
            dbf_Da=a,
            dbf_A=pack_signs(factors.sign_a),
            dbf_mid=c,
            dbf_B=pack_signs(factors.sign_b),
            dbf_Db=b,
            **meta,
        )

    def _scales(
        self, job: LayerJob, in_features: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(column scales s, row scales r) of the weighted objective."""
        if self.weighting == "none":
            return None, None
        if job.hessian is not None:
            diag = job.hessian.diagonal() if job.hessian.dim() == 2 else job.hessian
        elif job.input is not None:
            x = job.input.reshape(-1, job.input.shape[-1]).float()
            diag = 2 * x.pow(2).mean(0)
        else:
            logger.warning("DBF layer %r got no calibration statistics: unweighted fit", job.name)
            diag = None
        col = activation_scales(None if diag is None else diag.cpu(), in_features)
        if self.weighting != "activation_gradient":
            return col, None
        if job.gradients is None:
            raise ValueError(
                f"weighting='activation_gradient': no output-gradient moments for layer "
                f"{job.name!r} (the engine provides them when needs() asks; a seed-API call "
                "cannot) — use weighting='activation'"
            )
        return col, gradient_scales(job.gradients)

    def inference_layer(self, result: DBFResult, linear: nn.Module) -> nn.Module:
        bias = getattr(linear, "bias", None)
        if not result.is_dbf_quantized:
            return dense_layer(result.dequantized_weight, bias, linear.weight.dtype)
        return DoubleBinaryLinear.from_parts(
            result.dbf_Da, result.dbf_A, result.dbf_mid, result.dbf_B, result.dbf_Db, bias=bias
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        has_bias = bool(row.get("bias", False))
        if not row.get("is_dbf_quantized", True):
            dtype = getattr(torch, row.get("dense_dtype", "float16"))
            return nn.Linear(row["in_features"], row["out_features"], bias=has_bias, dtype=dtype)
        return DoubleBinaryLinear(
            row["in_features"], row["out_features"], row["mid_features"], bias=has_bias
        )

    # -- lifecycle: the twins the engine fine-tunes, the teacher, distillation at the end -------
    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableDBF | None:
        """The twin the engine fine-tunes per block (its vectors; signs with a sign lr)."""
        if not isinstance(result, DBFResult) or not result.is_dbf_quantized:
            return None
        sign_lr = 0.0 if self._fixed_signs else self.finetune_sign_lr
        bias = getattr(linear, "bias", None)
        return TrainableDBF(result, bias, torch.device("cpu"), sign_lr > 0, sign_lr)

    def on_block_done(self, view: BlockView) -> dict[str, LayerResult]:
        """After the engine's block fine-tuning: keep the teacher when this is the last block."""
        self._keep_teacher(view)
        return {}

    def prepare(self, view: RunView) -> None:
        """Note the run's blocks: the teacher is the fp stream after the last of them."""
        self._teacher, self._prepared, self._blocks, self._sampled = None, True, None, None
        self._fixed_signs = self._over_sign_budget(view)
        if self.resolved_distill_steps() <= 0 or not view.batches:
            return
        if view.walk is None or not view.walk.has_head:
            logger.warning("DBF: the model has no output head to distil from; distillation off")
            return
        self._blocks = len(view.walk)
        if self.distill_data != "calibration":
            self._sampled = self._sample(view)

    def _over_sign_budget(self, view: RunView) -> bool:
        """Whether one block's sign training would keep more than ``sign_state_mb`` (a notice).

        Counted from the shapes before any fit: 16 B a sign (latent, gradient,
        Adam's two moments), k·(n + m) signs a layer. A TinyLlama-shape block at
        1.5 bits has 66 M signs, ~1 GB: six times the block's fp32 weights.
        """
        if not (self.fine_tunes() and self.finetune_sign_lr > 0):
            return False
        blocks = [name + "." for name in view.walk.names] if view.walk is not None else [""]
        signs = dict.fromkeys(blocks, 0)
        for name, layer in view.layers.items():
            block = next((b for b in blocks if name.startswith(b)), None)
            if block is not None and getattr(layer, "weight", None) is not None:
                n, m = layer.weight.shape
                signs[block] += middle_dim(n, m, self.layer_bits(name), self.clamp_k) * (n + m)
        state = SIGN_STATE_PER_SIGN * max(signs.values(), default=0)
        if state <= self.sign_state_mb * 2**20:
            return False
        logger.warning(
            "DBF block fine-tuning: training a block's signs would keep %.0f MB "
            "(sign_state_mb=%.0f); training the vectors only",
            state / 2**20,
            self.sign_state_mb,
        )
        return True

    def _sample(self, view: RunView) -> tuple[list, Teacher]:
        """As many sequences as calibration windows, sampled by the fp model, and its outputs."""
        ids = view.batches[0][0]
        count = sum(int(b[0].shape[0]) for b in view.batches)
        bos = getattr(getattr(view.model, "config", None), "bos_token_id", None)
        bos = int(ids[0, 0]) if bos is None else int(bos)
        shape = (count, int(ids.shape[1]), bos, self.seed + 104729, int(ids.shape[0]))
        if resident(view.model, view.walk.device):
            batches = sample_with_cache(view.model, *shape)
        else:
            batches = sample_sequences(view.walk, *shape)
        return batches, Teacher(last_hidden(view.walk, batches))

    def _keep_teacher(self, view: BlockView) -> None:
        if self._blocks is not None and view.index == self._blocks - 1 and view.fp_outputs:
            self._teacher = Teacher(view.fp_outputs)

    def on_model_done(self, view: RunView) -> dict[str, LayerResult]:
        """Distil the vectors (and signs) of every DBF layer against the teacher, streamed."""
        teacher, self._teacher, self._prepared = self._teacher, None, False
        sampled, self._sampled, self._blocks = self._sampled, None, None
        if teacher is None or not view.batches or view.walk is None:
            return {}
        batches = list(view.batches)
        if sampled is not None:
            own, sampled_teacher = sampled
            if self.distill_data == "generated":
                batches, teacher = own, sampled_teacher
            else:
                batches, teacher = batches + own, Teacher(teacher.hidden + sampled_teacher.hidden)
        results, losses = distill_model(
            view.walk,
            view.layers,
            view.results,
            batches,
            teacher,
            self.resolved_distill_steps(),
            self.distill_lr,
            self.distill_sign_lr,
            self.seed,
            self.distill_blocks,
            int(self.sign_state_mb * 2**20),
        )
        logger.info("DBF model distillation: %s", losses)
        return results
