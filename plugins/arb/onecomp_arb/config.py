"""ARB's parameters as data: the seed's ``arb_iters`` and ``split_points``, plus the variants.

``variant`` picks the form and the objective: "arb" (the seed's data-free
α ⊙ B + μ), "x" (ARB-X: the same form fitted to the output error with XᵀX),
"rc" (ARB-RC: diag(r)·B·diag(c), fitted to the output error when calibration
is there). ``sign_rounds`` adds error-feedback sign choices for "x" and "rc".
Defaults beyond the seed's are justified with measurements in the README.
"""

from __future__ import annotations

from dataclasses import dataclass

from onecomp_core.contract import Method, param

VARIANTS = ("rc", "x", "arb")


@dataclass
class ARBConfig(Method):
    """Alternating refined binarization: one sign matrix plus per-row (and per-column) scales."""

    arb_iters: int = param(15, ge=0, le=1000, doc="alternating refinement iterations")
    split_points: int = param(
        2, ge=1, le=16, doc="quantile groups of the seed's μ walk (1 = plain ARB)"
    )
    variant: str = param("rc", choices=VARIANTS, doc="rc (row+column scales) | x (XᵀX) | arb")
    sign_rounds: int = param(
        2, ge=0, le=20, doc="x/rc: rounds of error-feedback signs + scale refit (0 = sign rule)"
    )
    percdamp: float = param(
        0.01, gt=0, le=1, doc="damping (× mean diag) of XᵀX for the feedback signs"
    )
    finetune_steps: int = param(100, ge=0, doc="block-wise Adam steps; 0 = layer-wise only")
    finetune_lr: float = param(1e-2, gt=0, doc="Adam learning rate of the scales")
    #: stories260K, fine-tuned, ts: 75.0 with 0.02 (see the README)
    finetune_sign_lr: float = param(
        0.02, ge=0, doc="Adam learning rate of the sign latents (straight-through); 0 = fixed"
    )

    def fine_tunes(self) -> bool:
        """Whether the blocks are fine-tuned (``finetune_steps`` > 0)."""
        steps = self.finetune_steps
        return isinstance(steps, int) and not isinstance(steps, bool) and steps > 0

    def calibrated(self) -> bool:
        """Whether the variant fits to the output error (needs XᵀX)."""
        return self.variant in ("x", "rc")
