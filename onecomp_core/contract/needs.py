"""What a method asks of the engine, declared as data rather than flags.

The engine reads :class:`Needs` and satisfies it, streamed and bounded in
memory: it collects input statistics per layer, output-gradient moments
once before planning, keeps the full-precision stream for block-wise
fine-tuning, quantizes in sequential sub-groups, and hands the model and
calibration batches to a model-level step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .finetune import FineTune

INPUT_STATISTICS = ("none", "diag", "full")
GRADIENT_LABELS = ("model", "data")
GRADIENT_SCOPES = ("model", "block")


@dataclass(frozen=True)
class GradientMoments:
    """Output-gradient moments: b_i = E[g_i²] at each layer's output (and K-FAC factors).

    ``labels``: "model" draws the labels of the backward pass from the model
    itself (true Fisher), "data" uses the calibration text's next tokens.
    ``full`` also keeps XᵀX/N and GᵀG/N per layer. ``max_sequences`` and
    ``max_tokens`` cap the calibration used for this pass. ``scope``: "model"
    backpropagates the loss at the head through every block (streamed, block
    by block), "block" uses block-local probes of each block's relative output
    error instead (no model end, no backward across blocks).
    """

    labels: str = "model"
    samples: int = 1
    full: bool = False
    max_sequences: int | None = None
    max_tokens: int | None = None
    seed: int = 0
    gradients: bool = True
    scope: str = "model"


@dataclass(frozen=True)
class Needs:
    """The statistics and engine features one method needs.

    ``inputs``: "full" H = (2/N)·XᵀX per layer, "diag" its diagonal, "none".
    ``moments``: output-gradient moments, collected once before ``prepare``.
    ``fp_stream``: the full-precision model's outputs of each block
    (``BlockView.fp_outputs``: the targets of block fine-tuning, a teacher).
    ``sequential``: quantize a block's layers in sub-groups (q/k/v → o →
    gate/up → down), each seeing the inputs the already-quantized earlier
    groups produce. ``model_pass``: the
    method's ``on_model_done`` uses the calibration batches. ``precision``:
    the dtype the input statistics are accumulated in.
    """

    inputs: str = "none"
    moments: GradientMoments | None = None
    fp_stream: bool = False
    sequential: bool = False
    model_pass: bool = False
    precision: torch.dtype = torch.float32
    finetune: FineTune | None = None

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_STATISTICS:
            raise ValueError(f"Needs.inputs={self.inputs!r}: expected one of {INPUT_STATISTICS}")
        if self.finetune is not None and not isinstance(self.finetune, FineTune):
            raise TypeError(f"Needs.finetune={self.finetune!r}: expected a FineTune or None")
        if self.fine_tunes:  # fine-tuning matches the fp block's outputs: keep the fp stream
            object.__setattr__(self, "fp_stream", True)

    @property
    def fine_tunes(self) -> bool:
        """Whether the engine fine-tunes blocks (a FineTune with steps > 0)."""
        return self.finetune is not None and self.finetune.active

    @staticmethod
    def strongest(kinds: list[str]) -> str:
        """The input statistic that serves every kind listed ("full" serves "diag")."""
        return max(kinds, key=INPUT_STATISTICS.index, default="none")

    @property
    def calibration(self) -> bool:
        """Whether the run needs calibration data at all."""
        return (
            self.inputs != "none" or self.fp_stream or self.moments is not None or self.model_pass
        )
