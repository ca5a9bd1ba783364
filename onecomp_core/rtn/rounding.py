"""Round-to-nearest on one weight matrix: pure tensor functions, testable without a model."""

from __future__ import annotations

import torch

from ..kernels import grid_params, quantize_codes


def rtn_quantize(
    weight: torch.Tensor, bits: int, groupsize: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 (out, in), scales fp16 (out, groups), zeros uint8 (out, groups)).

    Each group of ``groupsize`` input columns (the whole row for -1; the last
    group may be shorter) gets its own grid from its min/max.
    """
    w = weight.float()
    size = w.shape[1] if groupsize == -1 else groupsize
    codes, scales, zeros = [], [], []
    for start in range(0, w.shape[1], size):
        block = w[:, start : start + size]
        scale, zero = grid_params(block, bits, sym)
        codes.append(quantize_codes(block, scale, zero, bits))
        scales.append(scale)
        zeros.append(zero)
    return (
        torch.cat(codes, dim=1).to(torch.uint8),
        torch.stack(scales, dim=1).to(torch.float16),
        torch.stack(zeros, dim=1).to(torch.uint8),
    )
