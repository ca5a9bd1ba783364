"""MDBF's parameters as data, each declared once: the seed's names and defaults, plus ours.

Defaults that differ from the seed (``activation_aware``, ``admm_seed``) and
the new ones (``budget``, ``hessian_damp``, the fine-tuning) are justified
in the plugin README. Per-layer bits: an exact name in ``module_target_bits``
beats ``mlp_target_bits`` (names containing "mlp") beats ``target_bits``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from onecomp_core.contract import Method, param

from .envelope import BUDGETS

#: model-level distillation steps when fine-tuning is on (DBF's default, see the README)
DEFAULT_DISTILL_STEPS = 400


@dataclass
class MDBFConfig(Method):
    """Multi-envelope double binary factorization's parameters, as saved."""

    target_bits: float = param(1.0, gt=0, le=16, doc="bits per weight (see budget)")
    l: int = param(2, ge=1, le=16, doc="rank of the magnitude envelopes (1 = DBF)")  # noqa: E741
    P: int = param(1, ge=1, le=8, doc="residual paths")
    svd_mode: str = param(
        "svd", choices=("svd", "svd_llm"), doc="init without activation_aware: plain or whitened"
    )
    use_admm: bool = param(True, doc="refine the SVD init by ADMM (else init only)")
    admm_outer_iters: int = param(260, ge=1, doc="alternating F/G updates per path")
    admm_inner_iters: int = param(3, ge=1, doc="ADMM steps per update")
    admm_reg: float = param(0.03, ge=0, doc="ridge λ relative to mean diag(KᵀK)")
    admm_seed: int | None = param(
        None, int, optional=True, doc="seed of the init noise (null = 0: deterministic)"
    )
    use_gradient_refine: bool = param(False, doc="Adam on the envelopes after ADMM (signs fixed)")
    gradient_iters: int = param(1000, ge=1, doc="Adam steps of the gradient refinement")
    gradient_lr: float = param(0.01, gt=0, doc="Adam rate of the gradient refinement")
    activation_aware: bool = param(
        True, doc="fit the layer output error tr(E·H·Eᵀ) (seed: False, weight error)"
    )
    act_init: str = param(
        "osvd", choices=("osvd", "svd_llm", "none"), doc="whitened SVD init when activation-aware"
    )
    scale_bits: int = param(16, ge=1, le=32, doc="bits of an envelope entry in budget='total'")
    mlp_target_bits: float | None = param(
        None, float, gt=0, le=16, optional=True, doc="bits of MLP layers"
    )
    module_target_bits: dict | None = param(
        None, dict, optional=True, doc="exact layer name → bits"
    )
    budget: str = param(
        "signs", choices=BUDGETS, doc="signs: target_bits = sign bits (DBF); total: all stored"
    )
    hessian_damp: float = param(0.1, ge=0, le=1, doc="pulls the input correlation towards I")
    finetune_steps: int = param(100, ge=0, doc="block fine-tuning Adam steps; 0 = layer-wise")
    finetune_lr: float = param(1e-2, gt=0, doc="Adam rate of the envelopes (multiplicative)")
    finetune_sign_lr: float = param(
        0.02, ge=0, doc="Adam rate of the sign latents (straight-through); 0 = signs fixed"
    )

    distill_steps: int | None = param(
        None, int, ge=0, optional=True, doc="model-level KL steps; null = 400 with fine-tuning"
    )
    distill_lr: float = param(1e-2, gt=0, doc="Adam rate of the envelopes in the distillation")
    distill_sign_lr: float = param(0.02, ge=0, doc="sign-latent rate of the distillation")

    def resolved_distill_steps(self) -> int:
        """``distill_steps``, or 400 with fine-tuning on and none without (DBF's rule)."""
        if self.distill_steps is not None:
            return self.distill_steps
        return DEFAULT_DISTILL_STEPS if self.fine_tunes() else 0

    def more_problems(self) -> list[str]:
        """Each per-layer override obeys the rule ``mlp_target_bits`` declares."""
        if not isinstance(self.module_target_bits, dict):
            return []
        rule = self.parameters()["mlp_target_bits"]
        found = []
        for key, value in self.module_target_bits.items():
            if not isinstance(key, str):
                found.append(f"module_target_bits key {key!r}: expected a layer name")
            label = f"module_target_bits[{key!r}]"
            found.append(
                f"{label}=None: expected a number" if value is None else rule.problem(label, value)
            )
        return [p for p in found if p]

    def layer_bits(self, name: str) -> float:
        """Bits of one layer: module_target_bits[name] > mlp_target_bits (mlp) > target_bits."""
        bits = self.per_layer(name, self.target_bits, self.mlp_target_bits, self.module_target_bits)
        return float(bits)

    def layer_seed(self, name: str) -> int:
        """The fit's seed for layer ``name``: ``admm_seed`` (null = 0) mixed with the name."""
        return ((self.admm_seed or 0) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)

    def fine_tunes(self) -> bool:
        return self.finetune_steps > 0
