"""``TernaryLinear``: the inference module, with signs packed as 2-bit codes.

Codes are ``sign + 1`` (0, 1, 2), packed 16 per int32 word along the input
dimension with the core's bit packing (``onecomp_core.kernels``), so a layer
costs 2 bits per weight plus one fp16 scale per output row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onecomp_core.kernels import pack_dim1, packed_length, unpack_dim1

from .ternary import dequantize

BITS = 2


class TernaryLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        words = packed_length(in_features, BITS)
        self.register_buffer("qweight", torch.zeros(out_features, words, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(out_features, dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None

    @classmethod
    def from_signs(
        cls, signs: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
    ) -> TernaryLinear:
        out_features, in_features = signs.shape
        layer = cls(in_features, out_features, bias is not None)
        layer.qweight.copy_(pack_dim1(signs.to(torch.int64) + 1, BITS))
        layer.scales.copy_(scales.to(torch.float16))
        if bias is not None:
            layer.bias = bias.detach().to(torch.float16).clone()
        return layer

    def signs(self) -> torch.Tensor:
        """(out, in) int8 signs in {-1, 0, 1}."""
        codes = unpack_dim1(self.qweight, BITS, self.in_features)
        return codes.to(torch.int8) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequantize(self.signs(), self.scales).to(x.device, x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, ternary"
