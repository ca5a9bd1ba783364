"""CQ's parameters as data: the seed's ``each_row``, plus the calibration-aware fit and fine-tuning.

Defaults beyond the seed's (``weighting="full"``, ``code_rounds=2``,
``finetune_steps``) are justified with measurements in the plugin README.
"""

from __future__ import annotations

from dataclasses import dataclass

from onecomp_core.contract import Method, param

#: "none": the seed's data-free 2-means; "diag": weighted by the input second moments
#: diag(XᵀX); "full": that start, then levels and codes fitted to the output error with XᵀX
WEIGHTINGS = ("full", "diag", "none")


@dataclass
class CQConfig(Method):
    """Clustering quantization: each row (or the whole matrix) as two levels, 1 bit per weight."""

    each_row: bool = param(True, doc="two levels per row (false: one pair for the whole matrix)")
    weighting: str = param(
        "full", choices=WEIGHTINGS, doc="none | diag (input second moments) | full (XᵀX)"
    )
    code_rounds: int = param(
        2, ge=0, le=20, doc="with weighting=full: rounds of error-feedback codes + level refit"
    )
    percdamp: float = param(
        0.01, gt=0, le=1, doc="damping (× mean diag) of XᵀX for the feedback codes"
    )
    finetune_steps: int = param(100, ge=0, doc="block-wise Adam steps; 0 = layer-wise only")
    finetune_lr: float = param(1e-2, gt=0, doc="Adam learning rate of the levels")
    finetune_sign_lr: float = param(
        0.0, ge=0, doc="Adam learning rate of the sign latents (straight-through); 0 = fixed"
    )

    def fine_tunes(self) -> bool:
        """Whether the blocks are fine-tuned (``finetune_steps`` > 0)."""
        steps = self.finetune_steps
        return isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
