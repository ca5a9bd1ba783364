"""DBF layers made trainable: the vectors (and, straight-through, the signs) under Adam.

Shared by the block fine-tuning (the engine's, through ``DBF.trainable_layer``)
and the model-level distillation: the trainable twin of a DBF layer (a
:class:`~onecomp_core.contract.TrainableLayer`), swapping the twins into a
module while every other parameter is frozen, the optimizer, and the result
a trained twin leaves behind. The vectors are trained as multiplicative corrections
(init 1), so one learning rate fits layers of any scale.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
from torch import nn

from onecomp_core.contract import TrainableLayer
from onecomp_core.kernels import fixed_sign_matmul, int8_signs, pack_signs

from .factors import gauge_for_fp16
from .result import DBFResult

logger = logging.getLogger(__name__)

#: bytes sign training keeps per sign: the fp32 latent, its gradient and Adam's two moments
SIGN_STATE_PER_SIGN = 16


def sign_state_bytes(results: dict[str, DBFResult]) -> int:
    """Bytes training the signs of ``results`` keeps (:data:`SIGN_STATE_PER_SIGN` a sign)."""
    return sum(
        SIGN_STATE_PER_SIGN * r.mid_features * (r.out_features + r.in_features)
        for r in results.values()
        if isinstance(r, DBFResult) and r.is_dbf_quantized
    )


class TrainableDBF(TrainableLayer):
    """A DBF layer whose vectors are a0·θa, c0·θc, b0·θb with trainable θ (fp32).

    With ``train_signs`` the sign matrices get real latents (init ±1) trained
    through a straight-through estimator: the forward uses sign(latent);
    ``sign_lr`` is their learning rate in :meth:`param_groups`. Fixed signs are
    int8 buffers ``sign_a`` (n × k) and ``sign_b`` (k × m), and the forward runs
    through the factors (:meth:`_factored`), so the graph keeps one byte per sign.
    """

    def __init__(
        self,
        result: DBFResult,
        bias: torch.Tensor | None,
        device: torch.device,
        train_signs: bool = False,
        sign_lr: float = 0.0,
    ):
        super().__init__()
        self.result, self.train_signs, self.sign_lr = result, train_signs, sign_lr
        if train_signs:
            s_a, s_b = result.signs()
            self.sign_a_t = nn.Parameter(s_a.t().contiguous().to(device))
            self.sign_b_t = nn.Parameter(s_b.t().contiguous().to(device))
        else:
            self.register_buffer("sign_a", None)
            self.register_buffer("sign_b", None)
            self._unpack_fixed(device)
        self.register_buffer("a0", result.dbf_Da.float().to(device))
        self.register_buffer("c0", result.dbf_mid.float().to(device))
        self.register_buffer("b0", result.dbf_Db.float().to(device))
        self.register_buffer("bias", None if bias is None else bias.detach().float().to(device))
        self.theta_a = nn.Parameter(torch.ones_like(self.a0))
        self.theta_c = nn.Parameter(torch.ones_like(self.c0))
        self.theta_b = nn.Parameter(torch.ones_like(self.b0))
        #: Ŵᵀ of the current optimizer step (a leaf gathering its batches' gradient)
        self._step_weight: torch.Tensor | None = None

    def _unpack_fixed(self, device: torch.device | str) -> None:
        r = self.result
        self.sign_a = int8_signs(r.dbf_A, r.out_features, r.mid_features, device)
        self.sign_b = int8_signs(r.dbf_B, r.mid_features, r.in_features, device)

    def park(self, device: torch.device | str) -> None:
        """Between uses: move to ``device``; fixed signs are dropped (re-unpacked by ``unpark``).

        What persists is what trains: the vectors (and the sign latents when they train).
        """
        self.to(device)
        if not self.train_signs:
            self.sign_a = self.sign_b = None

    def unpark(self, device: torch.device | str) -> None:
        """Ready for use on ``device`` (fixed signs unpacked again from the packed result)."""
        self.to(device)
        if not self.train_signs and self.sign_a is None:
            self._unpack_fixed(device)

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.a0 * self.theta_a, self.c0 * self.theta_c, self.b0 * self.theta_b

    def signs_t(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_Aᵀ, S_Bᵀ) as fp32 ±1; straight-through gradients when the latents train."""
        if not self.train_signs:
            return self.sign_a.t().float(), self.sign_b.t().float()
        return _ste_sign(self.sign_a_t), _ste_sign(self.sign_b_t)

    def weight_t(self) -> torch.Tensor:
        """Ŵᵀ (m × n), differentiable in the vectors and (straight-through) the signs."""
        a, c, b = self.vectors()
        s_a_t, s_b_t = self.signs_t()
        return (s_b_t * b[:, None] * c[None, :]) @ (s_a_t * a[None, :])

    def begin_step(self) -> None:
        """Build Ŵᵀ once for the step's batches (a leaf: they add up its gradient).

        Ŵᵀ costs n·k·m to build and its graph holds ~4 such matrices; per batch
        that was most of the block fine-tuning's time and memory. The batches now
        share one Ŵᵀ and :meth:`end_step` takes the factors' gradient once.
        Fixed signs build nothing: the batches run through the factors, which
        keeps no (n × m) matrix and its gradient per layer for the whole step.
        """
        if not self.train_signs:
            return
        with torch.no_grad():
            self._step_weight = self.weight_t().requires_grad_()

    def end_step(self) -> None:
        """The step's gradient of Ŵᵀ through the factors (the graph of one layer at a time)."""
        weight, self._step_weight = self._step_weight, None
        if weight is not None and weight.grad is not None:
            self.weight_t().backward(weight.grad)

    def param_groups(self, lr: float) -> list[dict]:
        """The three vectors at ``lr``; the sign latents (when they train) at ``sign_lr``."""
        groups = [{"params": [self.theta_a, self.theta_c, self.theta_b], "lr": lr}]
        if self.train_signs and self.sign_lr > 0:
            groups.append({"params": [self.sign_a_t, self.sign_b_t], "lr": self.sign_lr})
        return groups

    def to_result(self) -> DBFResult | None:
        """The trained result (fp16 vectors, trained signs repacked, ``finetuned``); None if
        the vectors are not finite."""
        with torch.no_grad():
            a, c, b = (v.detach().float().cpu() for v in self.vectors())
            a, c, b = (v.to(torch.float16) for v in gauge_for_fp16(a, c, b))
            if not all(torch.isfinite(v).all() for v in (a, c, b)):
                return None
            signs = {}
            if self.train_signs:
                s_a_t, s_b_t = (s.detach().cpu() for s in self.signs_t())
                signs = {
                    "dbf_A": pack_signs(s_a_t.t().contiguous()),
                    "dbf_B": pack_signs(s_b_t.t().contiguous()),
                }
            return dataclasses.replace(
                self.result, dbf_Da=a, dbf_mid=c, dbf_Db=b, finetuned=True, **signs
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._step_weight is not None:  # a fine-tuning step's Ŵᵀ, shared by its batches
            h = x.float() @ self._step_weight
        elif self.train_signs:  # straight-through signs: through Ŵᵀ, built for this batch
            h = x.float() @ self.weight_t()
        else:
            h = self._factored(x.float())
        if self.bias is not None:
            h = h + self.bias
        return h.to(x.dtype)

    def _factored(self, x: torch.Tensor) -> torch.Tensor:
        """x·Ŵᵀ through the fixed (int8) signs, ((x ⊙ b)·S_Bᵀ ⊙ c)·S_Aᵀ ⊙ a.

        No (n × m) matrix is made and the graph keeps activations (tokens × k)
        and the int8 signs, not Ŵ and the factor-sized products: one
        TinyLlama-shape block's fine-tuning with fixed signs peaked 392 MB above
        its inputs instead of 947 (``benchmarks/dbf_finetune_speed.py --sign-lr
        0``). For T tokens it costs T·k·(n+m) multiply-adds against n·k·m +
        T·n·m for building and applying Ŵ. The same function as the dense path;
        the sums run in another order.
        """
        a, c, b = self.vectors()
        return fixed_sign_matmul(fixed_sign_matmul(x * b, self.sign_b) * c, self.sign_a) * a


def _ste_sign(latent: torch.Tensor) -> torch.Tensor:
    if not latent.requires_grad:
        return latent
    hard = torch.where(latent >= 0, 1.0, -1.0)
    return latent + (hard - latent).detach()


def trainable_twins(
    results: dict[str, DBFResult],
    layers: dict[str, nn.Module],
    device: torch.device,
    train_signs: bool,
) -> dict[str, TrainableDBF]:
    """A trainable twin of every DBF-quantized result whose layer is in ``layers``."""
    return {
        name: TrainableDBF(r, getattr(layers[name], "bias", None), device, train_signs)
        for name, r in results.items()
        if isinstance(r, DBFResult) and r.is_dbf_quantized and name in layers
    }


def adam_with_cosine(
    layers: dict[str, TrainableDBF], steps: int, lr: float, sign_lr: float
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over the three vectors (and the sign latents when ``sign_lr`` > 0), cosine decay to 0."""
    vectors = [p for m in layers.values() for p in (m.theta_a, m.theta_c, m.theta_b)]
    groups = [{"params": vectors, "lr": lr}]
    if sign_lr > 0:
        latents = [p for m in layers.values() for p in (m.sign_a_t, m.sign_b_t)]
        groups.append({"params": latents, "lr": sign_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    return opt, sched


def kept(before: float, after: float, what: str) -> bool:
    """Whether training helped (the loss fell and is finite); logs the outcome."""
    logger.info("%s loss %.4g → %.4g", what, before, after)
    if math.isfinite(after) and after < before:
        return True
    logger.warning("%s did not help (%.4g → %.4g); kept", what, before, after)
    return False


def trained_results(
    results: dict[str, DBFResult], twins: dict[str, TrainableDBF]
) -> dict[str, DBFResult]:
    """New results from the trained twins (:meth:`TrainableDBF.to_result`).

    The given results are not modified; a twin whose vectors are not finite
    leaves its layer out (the fitted result is kept).
    """
    out = {}
    for name, twin in twins.items():
        result = twin.to_result()
        if result is None:
            logger.warning("%s: fine-tuned vectors are not finite; the fitted ones are kept", name)
            continue
        out[name] = result
    return out
