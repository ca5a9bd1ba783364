"""``GPTQLinear``: the inference layer, in the standard GPTQ checkpoint layout.

Buffers ``qweight`` (in·b/32, out) int32, ``qzeros`` (groups, out·b/32) int32,
``scales`` (groups, out) fp16, ``g_idx`` (in,) int32 and an optional ``bias``
are exactly what transformers/vLLM-style GPTQ loaders read. With
``checkpoint_format="gptq"`` (v1) zero points are stored minus one, masked to
b bits; ``"gptq_v2"`` stores them raw. Unpacking is one gather and one shift
per code with precomputed word indices and bit offsets (any b, including the
continuous 3-bit stream).
"""

from __future__ import annotations

import torch
from onecomp_core.grid import num_groups
from onecomp_core.packed_linear import PackedIntLinear

#: checkpoint format → offset subtracted from zero points when they are stored
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}


def unpack_stream(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """(words, m) int32 holding a little-endian b-bit stream along dim 0 → (n, m) int64 codes."""
    pos = torch.arange(n, device=packed.device) * bits
    word, offset = pos // 32, (pos % 32).unsqueeze(1)
    p = packed.to(torch.int64) & 0xFFFFFFFF
    p = torch.cat([p, p.new_zeros(1, p.shape[1])])  # a zero word past the end for straddling codes
    low = p[word] >> offset
    high = p[word + 1] << (32 - offset)
    return (low | high) & ((1 << bits) - 1)


class GPTQLinear(PackedIntLinear):
    """A Linear whose weight is b-bit GPTQ codes; dequantizes per g_idx, then one matmul."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        groups: int,
        bias: bool = False,
        checkpoint_format: str = "gptq",
        cache_weight: bool = True,
    ) -> None:
        if checkpoint_format not in ZERO_OFFSETS:
            raise ValueError(
                f"checkpoint_format={checkpoint_format!r}: expected one of {sorted(ZERO_OFFSETS)}"
            )
        super().__init__(
            in_features,
            out_features,
            bits,
            groups,
            bias=bias,
            zero_offset=ZERO_OFFSETS[checkpoint_format],
            cache_weight=cache_weight,
        )
        self.checkpoint_format = checkpoint_format

    @classmethod
    def pack(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        g_idx: torch.Tensor,
        bits: int,
        bias: torch.Tensor | None = None,
        checkpoint_format: str = "gptq",
    ) -> GPTQLinear:
        """A layer holding (out, in) codes with (out, groups) scales and zero points."""
        out_features, in_features = codes.shape
        layer = cls(
            in_features, out_features, bits, scales.shape[1], bias is not None, checkpoint_format
        )
        return layer.fill(codes, scales, zeros, g_idx, bias)

    @classmethod
    def empty(
        cls,
        in_features: int,
        out_features: int,
        bits: int,
        groupsize: int,
        bias: bool = False,
        checkpoint_format: str = "gptq",
    ) -> GPTQLinear:
        """Right shapes, zero values: the skeleton a saved checkpoint is loaded into."""
        groups = num_groups(in_features, groupsize)
        return cls(in_features, out_features, bits, groups, bias, checkpoint_format)

    def codes(self) -> torch.Tensor:
        """(out, in) uint8 codes."""
        return unpack_stream(self.qweight, self.bits, self.in_features).t().to(torch.uint8)

    def zeros(self) -> torch.Tensor:
        """(groups, out) zero points in the raw convention."""
        stored = unpack_stream(self.qzeros.t(), self.bits, self.out_features).t()
        return (stored + self.zero_offset) & ((1 << self.bits) - 1)

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight in fp32: scale·(q − zero) with the group of each input."""
        g = self.g_idx.long()
        codes = unpack_stream(self.qweight, self.bits, self.in_features).float()  # (in, out)
        w = self.scales.float()[g] * (codes - self.zeros().float()[g])
        return w.t().contiguous()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached = None  # new tensors: forget a cached dense weight
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, checkpoint_format={self.checkpoint_format}"
