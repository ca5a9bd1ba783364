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

from typing import Any

from onecomp_core.kernels import PackedIntLinear

#: checkpoint format → offset subtracted from zero points when they are stored
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}


class GPTQLinear(PackedIntLinear):
    """A Linear whose weight is b-bit GPTQ codes; dequantizes per g_idx, then one matmul."""

    def __init__(self, *args: Any, checkpoint_format: str = "gptq", **kwargs: Any) -> None:
        """``PackedIntLinear``'s arguments, with the zero-point offset of ``checkpoint_format``."""
        if checkpoint_format not in ZERO_OFFSETS:
            raise ValueError(
                f"checkpoint_format={checkpoint_format!r}: expected one of {sorted(ZERO_OFFSETS)}"
            )
        super().__init__(*args, zero_offset=ZERO_OFFSETS[checkpoint_format], **kwargs)
        self.checkpoint_format = checkpoint_format

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, checkpoint_format={self.checkpoint_format}"
