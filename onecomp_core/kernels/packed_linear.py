"""``PackedIntLinear``: a Linear whose weight is stored as packed b-bit integer codes.

Tensors follow the GPTQ checkpoint layout (``qweight``, ``qzeros``,
``scales``, ``g_idx``, optional ``bias``), so RTN checkpoints and GPTQ
checkpoints are read the same way. ``zero_offset`` is 0 for raw zero points
("gptq_v2") and 1 for the legacy "gptq" (v1) convention that stores zero − 1.

Two ways to compute: the exact path (the weight dequantized to fp16, one
product in the input's dtype; with ``cache_weight`` the fp16 weight is kept,
as ``onecomp eval`` does per block) and, by default where the layer's
shapes allow, the fast bf16 path of :mod:`.int_matmul` (torch's int4/int8
kernels for few rows, a transient bf16 weight for many). ``use_kernel``
(or :func:`set_fast_path` for a whole model): None (the default) takes the
fast path for bf16 inputs only, so fp32 results stay exactly those of the
dequantized model; True takes it for fp32 inputs too (computed in bf16);
False never.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import packing
from .grid import num_groups
from .int_matmul import FAST_DTYPES, FastMatmul, block_layout


class PackedIntLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        groups: int,
        bias: bool = False,
        zero_offset: int = 0,
        cache_weight: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.zero_offset, self.cache_weight = bits, zero_offset, cache_weight
        words_in = packing.packed_length(in_features, bits)
        words_out = packing.packed_length(out_features, bits)
        self.register_buffer("qweight", torch.zeros(words_in, out_features, dtype=torch.int32))
        self.register_buffer("qzeros", torch.zeros(groups, words_out, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(groups, out_features, dtype=torch.float16))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16))
        else:
            self.bias = None
        self._cached: torch.Tensor | None = None
        #: fast bf16 path where shapes allow: None for bf16 inputs, True for fp32 too, False never
        self.use_kernel: bool | None = None
        self._fast: FastMatmul | None | bool = None  # None: not planned yet; False: no fast path

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        g_idx: torch.Tensor,
        bits: int,
        bias: torch.Tensor | None = None,
        **options: Any,
    ) -> PackedIntLinear:
        """Pack (out, in) codes with (out, groups) scales and zero points.

        ``options`` go to the constructor (``zero_offset`` here; a subclass's own).
        """
        out_features, in_features = codes.shape
        layer = cls(in_features, out_features, bits, scales.shape[1], bias is not None, **options)
        layer.qweight.copy_(packing.pack_dim0(codes.t(), bits))
        stored_zeros = (zeros.to(torch.int64) - layer.zero_offset) & ((1 << bits) - 1)
        layer.qzeros.copy_(packing.pack_dim1(stored_zeros.t(), bits))
        layer.scales.copy_(scales.t().to(torch.float16))
        layer.g_idx.copy_(g_idx.to(torch.int32))
        if bias is not None:
            layer.bias = bias.detach().to(torch.float16).clone()
        return layer

    @classmethod
    def empty(
        cls,
        in_features: int,
        out_features: int,
        bits: int,
        groupsize: int,
        bias: bool = False,
        **options: Any,
    ) -> PackedIntLinear:
        """Right shapes, zero values: the skeleton a saved checkpoint is loaded into."""
        groups = num_groups(in_features, groupsize)
        return cls(in_features, out_features, bits, groups, bias, **options)

    @classmethod
    def from_row(cls, row: dict[str, Any], **options: Any) -> PackedIntLinear:
        """:meth:`empty` from a saved per-layer row (in/out_features, bits, groupsize, bias)."""
        bits = row["bits"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits={bits!r}: packed integer layers hold 1 to 8 bits")
        return cls.empty(
            row["in_features"],
            row["out_features"],
            row["bits"],
            row["groupsize"],
            bool(row.get("bias", False)),
            **options,
        )

    def state_problems(self) -> list[str]:
        """What is wrong with the loaded tensors beyond shape and dtype (empty when sound).

        ``g_idx`` must name existing groups, and the zero bits that pad the
        last word of ``qweight`` (per column) and of ``qzeros`` (per row) must
        be zero: codes packed with more bits than the table says spill there.
        """
        found = []
        groups = self.scales.shape[0]
        g = self.g_idx
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= groups):
            found.append(
                f"g_idx: values from {int(g.min())} to {int(g.max())}, "
                f"expected 0 to {groups - 1} ({groups} groups)"
            )
        for label, words, n in (
            ("qweight", self.qweight, self.in_features),
            ("qzeros", self.qzeros.t(), self.out_features),
        ):
            if _padding_used(words, n, self.bits):
                found.append(f"{label}: codes wider than {self.bits} bits (padding bits are set)")
        return found

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cached, self._fast = None, None  # new tensors: forget derived weights
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._cached, self._fast = None, None  # moved or converted: derived weights are stale
        return super()._apply(fn, *args, **kwargs)

    def codes(self) -> torch.Tensor:
        """(out, in) uint8 codes."""
        return packing.unpack_dim0(self.qweight, self.bits, self.in_features).t()

    def zeros(self) -> torch.Tensor:
        """(groups, out) zero points in the raw convention."""
        stored = packing.unpack_dim1(self.qzeros, self.bits, self.out_features).to(torch.int64)
        return (stored + self.zero_offset) & ((1 << self.bits) - 1)

    def dequantize(self) -> torch.Tensor:
        """The dense (out, in) weight, rounded to fp16 like every result's dequantized weight."""
        g = self.g_idx.long()
        codes = self.codes().t().float()  # (in, out)
        w = self.scales.float()[g] * (codes - self.zeros().float()[g])
        return w.t().to(torch.float16).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = None if self.cache_weight else self.fast_path(x)
        return self.exact_forward(x) if fast is None else fast(x)

    def exact_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the fp16 dequantized weight, in x's dtype (kept if ``cache_weight``)."""
        weight = self._cached
        if weight is None or weight.device != x.device:
            weight = self.dequantize().to(x.device)
            self._cached = weight if self.cache_weight else None
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight.to(x.dtype), bias)

    def fast_path(self, x: torch.Tensor) -> FastMatmul | None:
        """The fast product for ``x``, or None where the exact path must serve."""
        if self.use_kernel is False or x.dtype not in FAST_DTYPES:
            return None
        if self.use_kernel is None and x.dtype != torch.bfloat16:
            return None
        if x.device != self.qweight.device:
            return None
        if x.device.type not in ("cpu", "cuda"):
            return None
        if x.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return None
        if self._fast is None:
            layout = block_layout(self.g_idx)
            self._fast = False if layout is None else FastMatmul(self, layout)
        return self._fast or None

    def derived_bytes(self) -> int:
        """Bytes held beside the buffers: the fast path's tables and kernel weight, a cached weight."""
        held = self._fast.kernel_bytes() if isinstance(self._fast, FastMatmul) else 0
        if self._cached is not None:
            held += self._cached.numel() * self._cached.element_size()
        return held

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}, groups={self.scales.shape[0]}"
        )


def _padding_used(words: torch.Tensor, n: int, bits: int) -> bool:
    """Whether any padding bit after the ``n`` codes of the last word (along dim 0) is set."""
    used = n * bits - (words.shape[0] - 1) * 32
    if words.numel() == 0 or used >= 32:
        return False
    last = words[-1].to(torch.int64) & 0xFFFFFFFF
    return bool((last >> used).any())


def set_fast_path(model: nn.Module, enabled: bool | None) -> int:
    """``use_kernel`` of every packed layer in ``model`` (True, False, None: bf16 only); how many."""
    layers = [m for m in model.modules() if isinstance(m, PackedIntLinear)]
    for layer in layers:
        layer.use_kernel = enabled
    return len(layers)
