"""QBB's parameters as data, each declared once: the seed's names and defaults, plus ours.

Seed parameters: ``wbits`` (the number of binary bases N), ``iters_per_basis``,
``lr``, ``ste_type``, ``use_progressive_quantization``, ``progressive_bits``.
Their meaning here (the fit is exact, not Adam; see the README):
``iters_per_basis`` bounds the alternating code/scale rounds after each added
basis (they stop earlier, when no code changes); ``lr`` is accepted and
saved for compatibility but unused (the scales are least-squares solutions,
not learnt); ``ste_type`` is the straight-through estimator of the sign
latents during block fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

from onecomp_core.contract import Method, param

STE_TYPES = ("clipped", "identity", "tanh")
WEIGHTINGS = ("activation", "none")


@dataclass
class QBBConfig(Method):
    """Quantization with Binary Bases: W ≈ Σ_k B_k·diag(a_k), N = ``wbits`` sign matrices."""

    wbits: int = param(4, ge=1, le=8, doc="binary bases N (bits of the signs per weight)")
    iters_per_basis: int = param(
        1000, ge=1, doc="max alternating code/scale rounds after each added basis"
    )
    lr: float = param(1e-4, gt=0, doc="seed's Adam rate of the scales; unused (exact solve)")
    ste_type: str = param(
        "clipped", choices=STE_TYPES, doc="straight-through estimator of the sign latents"
    )
    use_progressive_quantization: bool = param(
        False, doc="fit a uniform progressive_bits-bit rounding of W instead of W"
    )
    progressive_bits: int = param(2, ge=1, le=8, doc="bits of the progressive target")
    weighting: str = param(
        "activation", choices=WEIGHTINGS, doc="fit on the layer output error (H) or on W"
    )
    damp: float = param(0.01, ge=0, le=1, doc="H += damp·mean(diag H)·I (activation)")
    finetune_steps: int = param(100, ge=0, doc="block fine-tuning Adam steps; 0 = layer-wise")
    finetune_lr: float = param(1e-2, gt=0, doc="Adam rate of the scales (multiplicative)")
    finetune_sign_lr: float = param(
        0.0, ge=0, doc="Adam rate of the sign latents (straight-through); 0 = signs fixed"
    )
    seed: int = param(0, doc="seed of the fine-tuning's batch order")

    def fine_tunes(self) -> bool:
        """Whether the blocks are fine-tuned (``finetune_steps`` > 0)."""
        return self.finetune_steps > 0
