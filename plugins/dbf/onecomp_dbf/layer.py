"""The inference modules of DBF: ``DoubleBinaryLinear`` (the seed's 5-stage pipeline), or dense.

y = ((((x ⊙ b)·S_Bᵀ) ⊙ c)·S_Aᵀ) ⊙ a (+ bias), i.e. scaling0 → binary_B →
scaling2 → binary_A → scaling4. Buffers: ``scaling0`` b (m), ``scaling2`` c (k),
``scaling4`` a (n) in fp16, ``bp1`` = packed S_B (k × m), ``bp3`` = packed
S_A (n × k), optional fp16 ``bias``. The signs are unpacked on every call,
or once when ``cache_signs`` is set (faster; costs one compute-dtype element
per sign). A layer DBF could not factorize stays a plain ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.kernels import pack_signs, packed_size, unpack_signs


class DoubleBinaryLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        mid_features: int,
        bias: bool = False,
        cache_signs: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.mid_features = (
            in_features,
            out_features,
            mid_features,
        )
        self.cache_signs = cache_signs
        k = mid_features
        self.register_buffer("scaling0", torch.ones(in_features, dtype=torch.float16))
        self.register_buffer("scaling2", torch.ones(k, dtype=torch.float16))
        self.register_buffer("scaling4", torch.ones(out_features, dtype=torch.float16))
        self.register_buffer("bp1", torch.zeros(packed_size(k, in_features), dtype=torch.uint8))
        self.register_buffer("bp3", torch.zeros(packed_size(out_features, k), dtype=torch.uint8))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None
        self._signs: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_parts(
        cls,
        a: torch.Tensor,
        sign_a: torch.Tensor,
        c: torch.Tensor,
        sign_b: torch.Tensor,
        b: torch.Tensor,
        bias: torch.Tensor | None = None,
        cache_signs: bool = False,
    ) -> DoubleBinaryLinear:
        """From the vectors and ±1 (or already packed uint8) sign matrices."""
        n, k, m = a.numel(), c.numel(), b.numel()
        layer = cls(m, n, k, bias is not None, cache_signs)
        layer.scaling0.copy_(b.reshape(-1).to(torch.float16))
        layer.scaling2.copy_(c.reshape(-1).to(torch.float16))
        layer.scaling4.copy_(a.reshape(-1).to(torch.float16))
        layer.bp1.copy_(sign_b if sign_b.dtype == torch.uint8 else pack_signs(sign_b))
        layer.bp3.copy_(sign_a if sign_a.dtype == torch.uint8 else pack_signs(sign_a))
        if bias is not None:
            layer.bias.copy_(bias.detach().reshape(-1).to(torch.float16))
        return layer

    def state_problems(self) -> list[str]:
        """What is wrong with the loaded tensors beyond shape and dtype (empty when sound).

        The bits that pad the last byte of each sign matrix are always written
        as +1 (bit 1); anything else means the bytes were packed for another
        shape than the saved table says.
        """
        found = []
        for label, packed, rows, cols in (
            ("bp1", self.bp1, self.mid_features, self.in_features),
            ("bp3", self.bp3, self.out_features, self.mid_features),
        ):
            pad = (-rows * cols) % 8
            if pad and packed.numel() and int(packed[-1]) & ((1 << pad) - 1) != (1 << pad) - 1:
                found.append(f"{label}: padding bits are not +1 (packed for another shape)")
        return found

    def signs(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_A (n × k), S_B (k × m)) as ±1 in ``dtype``."""
        cached = self._signs
        if cached is not None and cached[0].dtype == dtype and cached[0].device == self.bp1.device:
            return cached
        s_a = unpack_signs(self.bp3, self.out_features, self.mid_features, dtype)
        s_b = unpack_signs(self.bp1, self.mid_features, self.in_features, dtype)
        self._signs = (s_a, s_b) if self.cache_signs else None
        return s_a, s_b

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight in fp32 (what the 5 stages compute, as one matrix)."""
        s_a, s_b = self.signs(torch.float32)
        left = self.scaling4.float()[:, None] * s_a * self.scaling2.float()[None, :]
        return left @ (s_b * self.scaling0.float()[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_a, s_b = self.signs(x.dtype)
        h = x * self.scaling0.to(x.dtype)  # scaling0
        h = h @ s_b.t()  # binary_B
        h = h * self.scaling2.to(x.dtype)  # scaling2
        h = h @ s_a.t()  # binary_A
        h = h * self.scaling4.to(x.dtype)  # scaling4
        if self.bias is not None:
            h = h + self.bias.to(x.dtype)
        return h

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"mid_features={self.mid_features}, bias={self.bias is not None}"
        )


def dense_layer(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    """A plain Linear holding a layer DBF could not factorize."""
    n, m = weight.shape
    layer = nn.Linear(m, n, bias=bias is not None, dtype=dtype)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias.detach())
    return layer
