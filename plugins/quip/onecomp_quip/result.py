"""What QuIP leaves for one layer: codes of the rotated weight, grids, d, and the two seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from onecomp_core.kernels import GridResult, gptq_effective_bits, orthogonal_transform

from .incoherence import Transform, dense_weight


@dataclass
class QuIPResult(GridResult):
    """GPTQ-grid codes of W_r = Uᵀ W diag(d) V; ``input_scale`` = d (in,) fp16; the seeds of V, U."""

    input_scale: torch.Tensor | None = None
    in_seed: int | None = 0  # None: no transform on that side
    out_seed: int | None = 1
    actorder: bool = False
    damping: float | None = None

    def rotated_weight(self) -> torch.Tensor:
        """Q̃: the dequantized codes in the rotated basis, fp16 values (what the layer computes with)."""
        return super().dequantize().float()

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        out_f, in_f = self.codes.shape
        u, v = transform(out_f, self.out_seed), transform(in_f, self.in_seed)
        w = dense_weight(self.rotated_weight(), self.input_scale, u, v)
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {
            **super().layer_config(),
            "desc_act": self.actorder,
            "in_seed": self.in_seed,
            "out_seed": self.out_seed,
        }

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return quip_effective_bits(self.bits, self.groupsize, out_features, in_features)


def quip_effective_bits(bits: int, groupsize: int, out_features: int, in_features: int) -> float:
    """GPTQ's bits (fp16 scale + b-bit zero per group) plus d: one fp16 per input column."""
    return gptq_effective_bits(bits, groupsize, in_features) + 16 / out_features


def transform(width: int, seed: int | None) -> Transform:
    """The seeded transform of ``width``, or None (identity) without a seed."""
    return None if seed is None else orthogonal_transform(width, seed)
