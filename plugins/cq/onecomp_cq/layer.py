"""``ClusterLinear``: CQ's inference module, 1 bit per weight plus two fp16 levels per row.

With μ = (left + right)/2, α = (right − left)/2 and S = 2·code − 1 ∈ {±1}:
y = α ⊙ (S x) + μ·(1ᵀx) (+ bias) — one sign matmul and a rank-one
correction (the core's band-wise ``sign_matmul``), never the dense weight. Buffers: ``codes`` (packed 8 per byte,
bit 1 = upper level), ``left_mean`` / ``right_mean`` fp16 (out,) or (1,),
optional fp16 ``bias``. The signs are unpacked per call, or once with
``cache_signs``.
"""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.kernels import pack_signs, packed_size, sign_matmul, unpack_signs


class ClusterLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        each_row: bool = True,
        bias: bool = False,
        cache_signs: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.each_row = in_features, out_features, each_row
        self.cache_signs = cache_signs
        pairs = out_features if each_row else 1
        size = packed_size(out_features, in_features)
        self.register_buffer("codes", torch.zeros(size, dtype=torch.uint8))
        self.register_buffer("left_mean", torch.zeros(pairs, dtype=torch.float16))
        self.register_buffer("right_mean", torch.zeros(pairs, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None
        self._signs: torch.Tensor | None = None

    @classmethod
    def from_parts(
        cls,
        codes: torch.Tensor,
        left: torch.Tensor,
        right: torch.Tensor,
        shape: tuple[int, int],
        bias: torch.Tensor | None = None,
        cache_signs: bool = False,
    ) -> ClusterLinear:
        """From the codes (packed uint8, or an (out, in) bool / ±1 matrix) and the two levels."""
        out_features, in_features = shape
        each_row = left.numel() == out_features
        layer = cls(in_features, out_features, each_row, bias is not None, cache_signs)
        if codes.dtype == torch.bool:
            codes = codes.to(torch.float32) * 2 - 1
        layer.codes.copy_(codes if codes.dtype == torch.uint8 else pack_signs(codes))
        layer.left_mean.copy_(left.reshape(-1).to(torch.float16))
        layer.right_mean.copy_(right.reshape(-1).to(torch.float16))
        if bias is not None:
            layer.bias.copy_(bias.detach().reshape(-1).to(torch.float16))
        return layer

    def state_problems(self) -> list[str]:
        """The padding bits of the last code byte are always +1; else another shape was packed."""
        pad = (-self.out_features * self.in_features) % 8
        if pad and self.codes.numel() and int(self.codes[-1]) & ((1 << pad) - 1) != (1 << pad) - 1:
            return ["codes: padding bits are not +1 (packed for another shape)"]
        return []

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._signs = None
        super()._load_from_state_dict(*args, **kwargs)

    def signs(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """S (out × in) as ±1 in ``dtype`` (+1: upper level)."""
        cached = self._signs
        if cached is not None and cached.dtype == dtype and cached.device == self.codes.device:
            return cached
        s = unpack_signs(self.codes, self.out_features, self.in_features, dtype)
        self._signs = s if self.cache_signs else None
        return s

    def scale_and_offset(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, μ) in fp32, (out,) or (1,)."""
        lo, hi = self.left_mean.float(), self.right_mean.float()
        return (hi - lo) / 2, (hi + lo) / 2

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight, fp32."""
        lo, hi = self.left_mean.float(), self.right_mean.float()
        return torch.where(self.signs() > 0, hi[:, None], lo[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, mu = self.scale_and_offset()
        if self.cache_signs:
            y = x @ self.signs(x.dtype).to(x.device).t()
        else:  # band by band from the packed codes, never the whole ±1 matrix
            y = sign_matmul(x, self.codes, self.out_features, self.in_features)
        y = y * alpha.to(x.dtype) + x.sum(dim=-1, keepdim=True) * mu.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"each_row={self.each_row}, bias={self.bias is not None}"
        )
