"""``BinaryScaledLinear``: ARB's inference module, 1 bit per weight plus fp16 scales.

y = α ⊙ (B (c ⊙ x)) + μ·(1ᵀx) (+ bias): one sign matmul, with the column
scale c (ARB-RC) applied to the input and the row offset μ (ARB, ARB-X) as a
rank-one correction — never the dense weight. Buffers: ``signs`` (packed 8
per byte, bit 1 = +1), ``alpha`` fp16 (out,), ``mu`` fp16 (out,) or
``col_scale`` fp16 (in,), optional fp16 ``bias``.
"""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.kernels import pack_signs, packed_size, unpack_signs


class BinaryScaledLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        column_scales: bool = True,
        bias: bool = False,
        cache_signs: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.column_scales, self.cache_signs = column_scales, cache_signs
        size = packed_size(out_features, in_features)
        self.register_buffer("signs", torch.zeros(size, dtype=torch.uint8))
        self.register_buffer("alpha", torch.zeros(out_features, dtype=torch.float16))
        if column_scales:
            self.register_buffer("col_scale", torch.ones(in_features, dtype=torch.float16))
            self.mu = None
        else:
            self.register_buffer("mu", torch.zeros(out_features, dtype=torch.float16))
            self.col_scale = None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None
        self._signs: torch.Tensor | None = None

    @classmethod
    def from_parts(
        cls,
        signs: torch.Tensor,
        alpha: torch.Tensor,
        mu: torch.Tensor | None,
        col_scale: torch.Tensor | None,
        in_features: int,
        bias: torch.Tensor | None = None,
        cache_signs: bool = False,
    ) -> BinaryScaledLinear:
        """From the signs (packed uint8 or ±1 (out, in)) and the scales (exactly one of mu and
        col_scale)."""
        if (mu is None) == (col_scale is None):
            raise ValueError("give exactly one of mu (ARB, ARB-X) and col_scale (ARB-RC)")
        layer = cls(
            in_features, alpha.numel(), col_scale is not None, bias is not None, cache_signs
        )
        layer.signs.copy_(signs if signs.dtype == torch.uint8 else pack_signs(signs))
        layer.alpha.copy_(alpha.reshape(-1).to(torch.float16))
        if col_scale is not None:
            layer.col_scale.copy_(col_scale.reshape(-1).to(torch.float16))
        else:
            layer.mu.copy_(mu.reshape(-1).to(torch.float16))
        if bias is not None:
            layer.bias.copy_(bias.detach().reshape(-1).to(torch.float16))
        return layer

    def state_problems(self) -> list[str]:
        """The padding bits of the last sign byte are always +1; else another shape was packed."""
        pad = (-self.out_features * self.in_features) % 8
        if pad and self.signs.numel() and int(self.signs[-1]) & ((1 << pad) - 1) != (1 << pad) - 1:
            return ["signs: padding bits are not +1 (packed for another shape)"]
        return []

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._signs = None
        super()._load_from_state_dict(*args, **kwargs)

    def sign_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """B (out × in) as ±1 in ``dtype``."""
        cached = self._signs
        if cached is not None and cached.dtype == dtype and cached.device == self.signs.device:
            return cached
        b = unpack_signs(self.signs, self.out_features, self.in_features, dtype)
        self._signs = b if self.cache_signs else None
        return b

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight, fp32."""
        w = self.alpha.float()[:, None] * self.sign_matrix()
        if self.col_scale is not None:
            w = w * self.col_scale.float()[None, :]
        if self.mu is not None:
            w = w + self.mu.float()[:, None]
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.col_scale is None else x * self.col_scale.to(x.dtype)
        y = (h @ self.sign_matrix(x.dtype).t()) * self.alpha.to(x.dtype)
        if self.mu is not None:
            y = y + x.sum(dim=-1, keepdim=True) * self.mu.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"column_scales={self.column_scales}, bias={self.bias is not None}"
        )
