"""``OneBitResult``: one layer's packed signs and its two fp16 scale vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp_core.contract import LayerResult
from onecomp_core.kernels import scaled_signs, sign_bits, unpack_signs


def onebit_bits(out_features: int, in_features: int) -> float:
    """Effective bits per weight: 1 + 16(p + m)/(pm) (signs, fp16 a and b)."""
    return sign_bits(out_features, in_features, row_vectors=1, col_vectors=1)


def fp16_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) in fp16, rebalanced by one scalar so both fit fp16's range (a·bᵀ is unchanged).

    None when a value is not finite.
    """
    a, b = a.float(), b.float()
    top_a, top_b = a.abs().max(), b.abs().max()
    if top_a > 0 and top_b > 0:
        gauge = (top_a / top_b).sqrt()
        a, b = a / gauge, b * gauge
    a, b = a.half(), b.half()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return None
    return a, b


@dataclass
class OneBitResult(LayerResult):
    """Ŵ = diag(a)·S·diag(b): ``sign`` packed (uint8, :func:`pack_signs` layout), a, b fp16.

    The stored a and b already include any balancing factors (the seed's
    defect: they did not), so (a, sign, b) alone reproduce the layer. The
    fields from ``use_balancing`` on record what produced it.
    """

    a: torch.Tensor | None = None
    sign: torch.Tensor | None = None
    b: torch.Tensor | None = None
    out_features: int = 0
    in_features: int = 0
    use_balancing: bool = True
    use_importance_scaling: bool = True
    refine: str = "none"
    finetuned: bool = False

    def signs(self) -> torch.Tensor:
        """S as ±1 float32 (out × in)."""
        return unpack_signs(self.sign, self.out_features, self.in_features)

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        w = scaled_signs(self.signs(), self.a, self.b)
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        # the ScaledSignLinear the loader builds: column scales, no row offsets
        return {"bits": 1, "col_scale": True, "row_offset": False}

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return onebit_bits(out_features, in_features)
