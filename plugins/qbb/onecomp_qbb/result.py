"""``QBBResult``: one layer's packed bases and scales, what produced them, and its bits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp_core.contract import LayerResult
from onecomp_core.kernels import unpack_signs


def qbb_bits(bases: int, out_features: int) -> float:
    """Bits per weight: N sign bits plus N fp16 scales per input column (N + 16N/p)."""
    return bases + 16 * bases / out_features


@dataclass
class QBBResult(LayerResult):
    """Ŵ = Σ_k B_k·diag(a_k): ``signs`` (N, ⌈p·m/8⌉) packed uint8, ``alphas`` (N, m) fp16.

    The fields from ``wbits`` on record the parameters that produced it.
    """

    signs: torch.Tensor | None = None
    alphas: torch.Tensor | None = None
    out_features: int = 0
    in_features: int = 0
    wbits: int = 4
    weighting: str = "activation"
    finetuned: bool = False

    def unpacked_signs(self) -> torch.Tensor:
        """(N, p, m) ±1 float32."""
        p, m = self.out_features, self.in_features
        return torch.stack([unpack_signs(s, p, m) for s in self.signs])

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        w = (self.unpacked_signs() * self.alphas.float()[:, None, :]).sum(0)
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {"bases": self.wbits}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return qbb_bits(self.wbits, out_features)
