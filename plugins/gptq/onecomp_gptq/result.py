"""What GPTQ leaves for one layer: compact codes and grids, and the per-layer row it saves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from onecomp_core.contract import LayerResult
from onecomp_core.kernels import gptq_effective_bits


@dataclass
class GPTQResult(LayerResult):
    """Compact result: uint8 codes (out, in), fp16 scales and uint8 zeros (out, groups), g_idx (in,).

    ``g_idx`` carries the act-order permutation (no separate ``perm``).
    """

    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None
    bits: int = 4
    groupsize: int = -1
    sym: bool = True
    actorder: bool = False
    checkpoint_format: str = "gptq"
    damping: float | None = None

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        g = self.g_idx.long()
        w = self.scales.float()[:, g] * (self.codes.float() - self.zeros.float()[:, g])
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "groupsize": self.groupsize,
            "sym": self.sym,
            "desc_act": self.actorder,
            "checkpoint_format": self.checkpoint_format,
        }

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return gptq_effective_bits(self.bits, self.groupsize, in_features)
