"""What GPTQ leaves for one layer: compact codes and grids, and the per-layer row it saves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onecomp_core.kernels import GridResult


@dataclass
class GPTQResult(GridResult):
    """Codes, scales and zeros on GPTQ's grid; ``g_idx`` (in,) carries the act-order permutation."""

    actorder: bool = False
    checkpoint_format: str = "gptq"
    damping: float | None = None

    def layer_config(self) -> dict[str, Any]:
        return {
            **super().layer_config(),
            "desc_act": self.actorder,
            "checkpoint_format": self.checkpoint_format,
        }
