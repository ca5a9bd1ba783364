"""DBF's parameters as data, each declared once: seed names and defaults, seed keys on disk.

:class:`FitSettings` are the knobs of one layer's fit (what
:func:`~onecomp_dbf.factorization.factorize` reads); :class:`DBFConfig` is
every DBF parameter, the fit's included, plus what they mean per layer (the
bits of a layer name, the model-level distillation steps). Defaults that
differ from the seed's (``iters``, ``use_balancing``, ``use_adaptive_rho``)
are justified with measurements in the plugin README.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from onecomp_core.contract import Config, Method, param

#: model-level distillation steps when fine-tuning is on
#: (2 bits, stories260K: 200 → ts 20.0, 400 → 18.5, 600 → 18.4)
DEFAULT_DISTILL_STEPS = 400
WEIGHTINGS = ("activation", "activation_gradient", "none")
#: what the model-level distillation trains on: the calibration text, text the full-precision
#: model samples itself (:mod:`onecomp_dbf.samples`), or both
DISTILL_DATA = ("calibration", "generated", "both")
#: default memory budget of sign training (``sign_state_mb``, MB at 16 B a sign): one block's
#: in block fine-tuning, every distilled block's in the distillation
SIGN_STATE_MB = 256
#: the balancing knobs, read (and so validated) only when ``use_balancing`` is on
BALANCING = ("balance_iters", "balance_alpha", "balance_mode")


@dataclass
class FitSettings(Config):
    """The knobs of one layer's fit; the method hands each layer a copy with its own seed."""

    iters: int = param(40, ge=1, doc="outer iterations of the alternating ADMM")
    reg: float = param(0.03, ge=0, doc="ridge on the factors in each ADMM step")
    use_balancing: bool = param(False, doc="Sinkhorn-balance the target first (preconditioner)")
    balance_iters: int = param(40, ge=1, doc="Sinkhorn iterations")
    balance_alpha: float = param(1.0, gt=0, doc="target row sum of the balanced |W|")
    balance_mode: str = param("l1", choices=("l1", "l2"), doc="balance sums or squared norms")
    use_adaptive_rho: bool = param(False, doc="residual-balancing ADMM penalty (×2 / ÷2)")
    seed: int = param(0, doc="seed of the fits and the fine-tuning (mixed with layer names)")

    def problems(self) -> list[str]:
        """Every invalid parameter; the balancing knobs only while balancing is on."""
        found = super().problems()
        if self.use_balancing:
            return found
        return [p for p in found if p.partition("=")[0] not in BALANCING]


@dataclass
class DBFConfig(FitSettings, Method):
    """Double Binary Factorization's parameters (the fit's, then the rest), as saved.

    Per-layer bits: an exact name in ``module_target_bits`` beats
    ``mlp_target_bits`` (names containing "mlp") beats ``target_bits``.
    """

    #: at most 16: beyond, the factors take more room than the fp16 weight they replace
    target_bits: float = param(
        1.5, gt=0, le=16, doc="sign-matrix bits per weight (k·(n+m) = t·n·m)"
    )
    mlp_target_bits: float | None = param(
        None, float, ge=1.0, le=16, optional=True, doc="bits of MLP layers"
    )
    module_target_bits: dict | None = param(
        None, dict, optional=True, doc="exact layer name → bits"
    )
    weighting: str = param(
        "activation", choices=WEIGHTINGS, doc="scales of the objective: inputs, + output grads"
    )
    clamp_k: bool = param(False, doc="cap k at min(n, m) like the reference implementation")
    finetune_steps: int = param(100, ge=0, doc="block-wise Adam steps; 0 = off")
    finetune_lr: float = param(1e-2, gt=0, doc="Adam learning rate of the vectors")
    finetune_sign_lr: float = param(
        0.02, ge=0, doc="Adam learning rate of the sign latents (straight-through); 0 = fixed"
    )
    sign_state_mb: float = param(
        SIGN_STATE_MB, gt=0,
        doc="memory for sign training: one block's (fine-tuning) or the distilled blocks' "
        "(distillation) latents, gradients and Adam moments, 16 B a sign; above, vectors only",
    )  # fmt: skip
    hessian_admm: bool = param(True, doc="fit the signs on the full-H objective, not its diag")
    hessian_damp: float = param(0.1, ge=0, le=1, doc="pulls the input correlation towards I")
    distill_steps: int | None = param(
        None, int, ge=0, optional=True, doc="model-level KL steps; null = 400 with fine-tuning"
    )
    distill_blocks: int | None = param(
        None, int, ge=1, optional=True,
        doc="distil only the last N blocks (block-local); null = every block, streamed end to end",
    )  # fmt: skip
    distill_data: str = param(
        "calibration", choices=DISTILL_DATA,
        doc="distil on the calibration text, on text the fp model samples itself, or both",
    )  # fmt: skip
    distill_lr: float = param(1e-2, gt=0, doc="Adam learning rate of the vectors")
    distill_sign_lr: float = param(0.02, ge=0, doc="sign learning rate of the distillation")
    #: the full H refits the vectors on the exact output error (diag(H) alone: False);
    #: a run setting, not saved (the seed did not save it either)
    flag_hessian: bool = param(True, saved=False, doc="collect the full H, not only diag(H)")

    def more_problems(self) -> list[str]:
        """Each per-layer override obeys the rule ``mlp_target_bits`` declares."""
        if not isinstance(self.module_target_bits, dict):
            return []  # None, or already reported as not a mapping
        rule = self.parameters()["mlp_target_bits"]
        found = []
        for key, value in self.module_target_bits.items():
            if not isinstance(key, str):
                found.append(f"module_target_bits key {key!r}: expected a layer name")
            label = f"module_target_bits[{key!r}]"
            found.append(
                f"{label}=None: expected {rule.describe().removesuffix(' or null')}"
                if value is None
                else rule.problem(label, value)
            )
        return [p for p in found if p]

    # -- what the parameters mean per layer -------------------------------------------------
    def layer_bits(self, name: str) -> float:
        """Bits of one layer: exact name in ``module_target_bits`` > "mlp" in the name →
        ``mlp_target_bits`` > ``target_bits``."""
        bits = self.per_layer(name, self.target_bits, self.mlp_target_bits, self.module_target_bits)
        return float(bits)

    def fit_settings(self, name: str) -> FitSettings:
        """The fit knobs for layer ``name``: the seed mixed with the name (stable across runs)."""
        knobs = {key: getattr(self, key) for key in FitSettings.parameters()}
        knobs["seed"] = (self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
        return FitSettings(**knobs)

    def resolved_distill_steps(self) -> int:
        """``distill_steps``, or its default: 400 with fine-tuning on, none without.

        ``finetune_steps=0`` is the layer-wise-only mode, so it switches the
        model-level distillation off too unless ``distill_steps`` is given.
        """
        if self.distill_steps is not None:
            return self.distill_steps
        return DEFAULT_DISTILL_STEPS if self.fine_tunes() else 0

    def fine_tunes(self) -> bool:
        """Whether the blocks are fine-tuned (``finetune_steps`` > 0)."""
        steps = self.finetune_steps
        return isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
