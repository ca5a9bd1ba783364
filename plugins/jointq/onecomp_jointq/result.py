"""What JointQ leaves for one layer: GPTQ-layout codes and grids, plus how far it got."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onecomp_core.kernels import GridResult


@dataclass
class JointQResult(GridResult):
    """Codes, scales and zeros on GPTQ's grid; the row saves GPTQ's keys (``desc_act``, format)."""

    actorder: bool = False
    checkpoint_format: str = "gptq"
    damping: float | None = None
    passes: int = 0
    start_error: float | None = None  # relative H̃-error of the GPTQ start
    final_error: float | None = None  # the same after JointQ

    def layer_config(self) -> dict[str, Any]:
        return {
            **super().layer_config(),
            "desc_act": self.actorder,
            "checkpoint_format": self.checkpoint_format,
        }
