"""Fast products for packed integer layers: torch's int4/int8 CPU kernels and a bf16 dense path.

:class:`~onecomp_core.kernels.PackedIntLinear`'s exact path dequantizes the
whole weight to fp16 on every call and multiplies in the input's dtype. A
layer whose groups are contiguous blocks of columns (in order, or after one
permutation of the inputs: act-order) can do better, in bfloat16:

- few rows (decoding): ``aten._weight_int4pack_mm_for_cpu`` for 4-bit codes
  (blocks of 32, 64, 128 or 256 inputs, out_features a multiple of 16) and
  ``aten._weight_int8pack_mm`` for 8-bit codes with one group per row; the
  kernel's weight is built once and kept;
- many rows (a prompt, a training batch): the weight dequantized to bf16
  for this call only, then one bf16 matrix product.

Why bfloat16: torch's int4 CPU kernel is vectorized for bf16 inputs only
(with fp32 inputs it ran ~50× slower than a dense fp32 product here), and a
bf16 product runs at about twice the fp32 rate, so a prompt's transient
bf16 dequantization plus product beats the fp32 dense layer. The price is
bf16 rounding of activations and scales (relative ~2⁻⁹), the precision GPU
GPTQ kernels trade too (they compute in fp16); the exact path stays one
attribute away (``use_kernel = False``).

Torch's int4 convention: ``w = (q − 8)·scale + zero`` per (block, output),
so our ``w = scale·(q − z)`` maps to ``zero = scale·(8 − z)``, exactly in
fp32 (an fp16 scale times a 4-bit integer). 8-bit codes: ``q − 128`` is the
int8 weight; a zero point other than 128 adds ``scale·(128 − z)·Σx``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import packing

#: block sizes torch's int4 CPU kernel accepts, largest first
INT4_BLOCKS = (256, 128, 64, 32)
#: rows of input from which the dense bf16 path beats the int4 kernel (measured crossover ~100)
DENSE_FROM_ROWS = 128
#: input dtypes computed in bf16 on the fast path (fp16 inputs keep the exact path)
FAST_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class BlockLayout:
    """Inputs in an order where every run of ``block`` columns shares one group.

    ``perm``: the input order (None when the stored order already is);
    ``group``: (in_features // block,) the group of each block.
    """

    perm: torch.Tensor | None
    block: int
    group: torch.Tensor


def block_layout(
    g_idx: torch.Tensor, candidates: tuple[int, ...] = INT4_BLOCKS
) -> BlockLayout | None:
    """The largest block size of ``candidates`` that tiles ``g_idx`` (after sorting), or None.

    Sorting the inputs by group (stable) undoes act-order; any group size
    that is a multiple of the block (per-row grids included) then tiles.
    """
    g = g_idx.long().cpu()
    k = g.numel()
    perm = None
    if k > 1 and bool((g[1:] < g[:-1]).any()):
        perm = torch.argsort(g, stable=True)
        g = g[perm]
    for block in candidates:
        if k % block == 0:
            runs = g.view(-1, block)
            if bool((runs == runs[:, :1]).all()):
                return BlockLayout(perm, block, runs[:, 0].clone())
    return None


class FastMatmul:
    """A packed layer's fast product on one device: the block layout, scales per block, kernels.

    Holds what is worth keeping between calls (bf16 scales and zero points per
    block; the int4/int8 kernel weight once a small call needed it), never a
    dense weight.
    """

    def __init__(self, layer, layout: BlockLayout) -> None:
        self.layer, self.layout = layer, layout
        scales, zeros = self._per_block()
        self.scales, self.zeros = scales.to(torch.bfloat16), zeros.to(torch.bfloat16)
        self.perm = None if layout.perm is None else layout.perm.to(layer.scales.device)
        self._kernel: tuple | None = None

    def _per_block(self) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 (blocks, out) scales and zero points, exact (fp16 scales, integer zeros)."""
        group = self.layout.group.to(self.layer.scales.device)
        return self.layer.scales.float()[group], self.layer.zeros().float()[group]

    # -- the two regimes ----------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ Wᵀ (+ bias)`` for ``x`` of shape (..., in), computed in bf16, returned in x's dtype."""
        rows = x.numel() // x.shape[-1]
        flat = x.reshape(rows, x.shape[-1])
        if self.perm is not None:
            flat = flat.index_select(1, self.perm)
        flat = flat.to(torch.bfloat16)
        needs_grad = x.requires_grad and torch.is_grad_enabled()  # the kernels have no backward
        if (
            rows < DENSE_FROM_ROWS
            and x.device.type == "cpu"
            and not needs_grad
            and self._kernel_ready()
        ):
            out = self._kernel_product(flat)
        else:
            out = flat @ self.dense_bf16()
        if self.layer.bias is not None:
            out = out + self.layer.bias.to(out.dtype)
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def dense_bf16(self) -> torch.Tensor:
        """(in, out) bf16 weight in the layout's input order, made for one call."""
        layer, layout = self.layer, self.layout
        codes = packing.unpack_dim0(layer.qweight, layer.bits, layer.in_features)  # (in, out)
        if self.perm is not None:
            codes = codes.index_select(0, self.perm)
        blocks = codes.view(-1, layout.block, layer.out_features).to(torch.bfloat16)
        w = (blocks - self.zeros.unsqueeze(1)).mul_(self.scales.unsqueeze(1))
        return w.view(layer.in_features, layer.out_features)

    # -- kernels ------------------------------------------------------------------------------
    def _kernel_ready(self) -> bool:
        if self._kernel is None:
            self._kernel = self._build_kernel() or ()
        return bool(self._kernel)

    def _build_kernel(self) -> tuple | None:
        layer, layout = self.layer, self.layout
        if layer.bits == 4 and layer.out_features % 16 == 0:
            codes = self._codes_in_order().t().to(torch.int32).contiguous()  # (out, in)
            weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
            scales, zeros = self._per_block()
            table = torch.stack([scales, scales * (8.0 - zeros)], dim=2).to(torch.bfloat16)
            return ("int4", weight, table.contiguous(), layout.block)
        if layer.bits == 8 and int(layout.group.max()) == int(layout.group.min()):
            codes = self._codes_in_order().t().to(torch.int16)  # (out, in)
            weight = (codes - 128).to(torch.int8).contiguous()
            scales, zeros = self._per_block()
            scale, shift = scales[0], scales[0] * (128.0 - zeros[0])
            return ("int8", weight, scale.to(torch.bfloat16), shift if shift.any() else None)
        return None

    def _codes_in_order(self) -> torch.Tensor:
        codes = packing.unpack_dim0(self.layer.qweight, self.layer.bits, self.layer.in_features)
        return codes if self.perm is None else codes.index_select(0, self.perm)

    def _kernel_product(self, x: torch.Tensor) -> torch.Tensor:
        kind, weight, table, extra = self._kernel
        if kind == "int4":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, weight, extra, table)
        out = torch.ops.aten._weight_int8pack_mm(x, weight, table)
        if extra is not None:  # zero points other than 128: scale·(128 − z)·Σx
            out = (out.float() + x.float().sum(dim=1, keepdim=True) * extra).to(out.dtype)
        return out

    def kernel_bytes(self) -> int:
        """Bytes this object keeps beside the layer's own buffers."""
        held = [self.scales, self.zeros]
        if self.perm is not None:
            held.append(self.perm)
        held += [t for t in (self._kernel or ()) if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in held)
