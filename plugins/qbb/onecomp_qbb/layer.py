"""``BinaryBasesLinear``: the inference module of QBB, y = Σ_k B_k·(a_k ⊙ x) (+ bias).

Buffers: ``signs`` (N, ⌈p·m/8⌉) uint8, each basis packed 1 bit per sign by
the core's :func:`~onecomp_core.kernels.pack_signs` (row-major, MSB first,
1 = +1, tail padded with +1); ``alphas`` (N, m) fp16, the per-column scales
of each basis; optional fp16 ``bias``. The forward builds the dense weight
Σ_k B_k·diag(a_k) (kept between calls with ``cache_weight``) and runs one
matrix product: the same numbers as the N sign products, with one GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onecomp_core.kernels import pack_signs, packed_size, unpack_signs


class BinaryBasesLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bases: int,
        bias: bool = False,
        cache_weight: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bases = in_features, out_features, bases
        self.cache_weight = cache_weight
        size = packed_size(out_features, in_features)
        self.register_buffer("signs", torch.zeros(bases, size, dtype=torch.uint8))
        self.register_buffer("alphas", torch.zeros(bases, in_features, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None
        self._cached: torch.Tensor | None = None

    @classmethod
    def from_parts(
        cls,
        signs: torch.Tensor,
        alphas: torch.Tensor,
        out_features: int,
        bias: torch.Tensor | None = None,
        cache_weight: bool = False,
    ) -> BinaryBasesLinear:
        """From packed (N, bytes) uint8 or ±1 (N, p, m) signs and (N, m) scales."""
        n, m = alphas.shape
        layer = cls(m, out_features, n, bias is not None, cache_weight)
        if signs.dtype != torch.uint8:
            signs = torch.stack([pack_signs(s) for s in signs])
        layer.signs.copy_(signs)
        layer.alphas.copy_(alphas.to(torch.float16))
        if bias is not None:
            layer.bias.copy_(bias.detach().reshape(-1).to(torch.float16))
        return layer

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached = None  # new tensors: forget a cached dense weight
        super()._load_from_state_dict(*args, **kwargs)

    def state_problems(self) -> list[str]:
        """Padding bits of each packed basis must be +1 (else packed for another shape)."""
        pad = (-self.out_features * self.in_features) % 8
        if not pad or not self.signs.numel():
            return []
        mask = (1 << pad) - 1
        if bool(((self.signs[:, -1].to(torch.int32) & mask) != mask).any()):
            return ["signs: padding bits are not +1 (packed for another shape)"]
        return []

    def unpacked_signs(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(N, p, m) ±1."""
        p, m = self.out_features, self.in_features
        return torch.stack([unpack_signs(s, p, m, dtype) for s in self.signs])

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight Σ_k B_k·diag(a_k) in fp32."""
        return (self.unpacked_signs() * self.alphas.float()[:, None, :]).sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._cached
        if weight is None or weight.dtype != x.dtype or weight.device != x.device:
            weight = self.dequantize().to(x.device, x.dtype)
            self._cached = weight if self.cache_weight else None
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bases={self.bases}, bias={self.bias is not None}"
        )
