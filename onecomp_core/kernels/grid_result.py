"""The result of a method on GPTQ's integer grid: codes, per-group scales and zero points.

RTN, GPTQ and every method saved in the GPTQ layout keep the same compact
tensors and compute the same dense weight from them, so the result type
lives here once; a method adds only its own fields (GPTQ: act-order, format).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..contract import LayerResult
from .grid import gptq_effective_bits, group_index


@dataclass
class GridResult(LayerResult):
    """uint8 codes (out, in), fp16 scales and uint8 zeros (out, groups), optional g_idx (in,).

    ``g_idx`` maps each input column to its group (it carries an act-order
    permutation); without it, columns are grouped in order by ``groupsize``.
    """

    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None
    bits: int = 4
    groupsize: int = -1
    sym: bool = True

    def groups(self) -> torch.Tensor:
        """The group of each input column."""
        if self.g_idx is not None:
            return self.g_idx
        return group_index(self.codes.shape[1], self.groupsize)

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        g = self.groups().long()
        w = self.scales.float()[:, g] * (self.codes.float() - self.zeros.float()[:, g])
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "groupsize": self.groupsize, "sym": self.sym}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return gptq_effective_bits(self.bits, self.groupsize, in_features)
