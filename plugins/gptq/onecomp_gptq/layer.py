"""``GPTQLinear``: the inference layer, in the standard GPTQ checkpoint layout.

Buffers ``qweight`` (in·b/32, out) int32, ``qzeros`` (groups, out·b/32) int32,
``scales`` (groups, out) fp16, ``g_idx`` (in,) int32 and an optional ``bias``
are exactly what transformers/vLLM-style GPTQ loaders read. With
``checkpoint_format="gptq"`` (v1) zero points are stored minus one, masked to
b bits; ``"gptq_v2"`` stores them raw. Packing, unpacking (any b, including
the continuous 3-bit stream) and dequantizing come from the core's
``PackedIntLinear``.
"""

from __future__ import annotations

import torch
from onecomp_core.kernels import PackedIntLinear, num_groups

#: checkpoint format → offset subtracted from zero points when they are stored
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}


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
        cache_weight: bool = False,
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

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached = None  # new tensors: forget a cached dense weight
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, checkpoint_format={self.checkpoint_format}"
