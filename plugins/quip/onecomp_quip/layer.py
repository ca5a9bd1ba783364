"""``QuIPLinear``: packed codes of the rotated weight, applied between the factored transforms.

y = U·(Q̃·(Vᵀ·(x ⊘ d))) + b. The codes, grids and ``g_idx`` are the GPTQ
buffers of :class:`PackedIntLinear` (zero points in the raw v2 convention
minus one, like GPTQ v1); ``input_scale`` holds d; U and V are rebuilt
from the seeds in the saved per-layer row and applied factor by factor:
O(m·(m₁ + m₂)) per token, never a dense m×m product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from onecomp_core.kernels import PackedIntLinear

from .incoherence import apply, apply_transpose, dense_weight
from .result import transform


class QuIPLinear(PackedIntLinear):
    """A Linear stored as QuIP codes: rescale, rotate in, packed matmul, rotate out."""

    def __init__(self, *args: Any, in_seed: int = 0, out_seed: int = 1, **kwargs: Any) -> None:
        """``PackedIntLinear``'s arguments plus the seeds of the input (V) and output (U) transforms."""
        super().__init__(*args, zero_offset=1, **kwargs)
        self.in_seed, self.out_seed = in_seed, out_seed
        self.register_buffer("input_scale", torch.ones(self.in_features, dtype=torch.float16))
        self.u = transform(self.out_features, out_seed)
        self.v = transform(self.in_features, in_seed)

    @classmethod
    def from_result(cls, result: Any, bias: torch.Tensor | None) -> QuIPLinear:
        seeds = {"in_seed": result.in_seed, "out_seed": result.out_seed}
        layer = cls.from_codes(
            result.codes, result.scales, result.zeros, result.groups(), result.bits, bias, **seeds
        )
        layer.input_scale.copy_(result.input_scale)
        return layer

    def rotated_weight(self) -> torch.Tensor:
        """Q̃ (out, in) float32: the codes dequantized in the rotated basis."""
        return super().dequantize().float()

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight in the original basis, fp16 (as the result's)."""
        w = dense_weight(super().dequantize(), self.input_scale.float(), self.u, self.v)
        return w.to(torch.float16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._cached
        if weight is None or weight.dtype != x.dtype or weight.device != x.device:
            weight = super().dequantize().to(x.device, x.dtype)
            self._cached = weight if self.cache_weight else None
        rotated = apply(self.v, x / self.input_scale.to(x.dtype))
        y = apply_transpose(self.u, F.linear(rotated, weight))
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, in_seed={self.in_seed}, out_seed={self.out_seed}"
