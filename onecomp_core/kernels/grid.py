"""Uniform integer grids: scales, zero points, rounding, and group bookkeeping.

The conventions are GPTQ's, so RTN and GPTQ checkpoints share one layout:
``q = clamp(round(w / scale) + zero, 0, 2^b − 1)`` and ``ŵ = scale·(q − zero)``.
Scales are rounded to fp16 before use, so what a run computes with is exactly
what a loader will see.
"""

from __future__ import annotations

import torch


def max_code(bits: int) -> int:
    return (1 << bits) - 1


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) for ``w`` of shape (rows, cols); both have shape (rows,).

    Symmetric grids use ``xmin = −xmax`` unconditionally (an all-positive row
    must not lose half its range) and zero = (2^b − 1 + 1) / 2. Asymmetric
    grids span [min(w, 0), max(w, 0)].
    """
    maxq = max_code(bits)
    w = w.float()
    xmin = w.amin(dim=1).clamp(max=0)
    xmax = w.amax(dim=1).clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    span = xmax - xmin
    dead = span == 0
    xmin = torch.where(dead, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(dead, torch.ones_like(xmax), xmax)
    scale = round_scale((xmax - xmin) / maxq)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def round_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to their fp16 storage value (kept strictly positive)."""
    tiny = torch.finfo(torch.float16).tiny
    return scale.clamp(min=tiny, max=65504.0).to(torch.float16).float()


def quantize_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """Integer codes (float dtype) for ``w`` with per-row ``scale``/``zero`` broadcast on dim 1."""
    return torch.clamp(torch.round(w / scale.unsqueeze(-1)) + zero.unsqueeze(-1), 0, max_code(bits))


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale.unsqueeze(-1) * (q - zero.unsqueeze(-1))


def group_index(in_features: int, groupsize: int) -> torch.Tensor:
    """g_idx: the group of each input column (the last group may be shorter)."""
    size = in_features if groupsize in (-1, 0) else groupsize
    return torch.arange(in_features, dtype=torch.int32) // size


def num_groups(in_features: int, groupsize: int) -> int:
    return 1 if groupsize in (-1, 0) else -(-in_features // groupsize)


def gptq_effective_bits(bits: int, groupsize: int, in_features: int) -> float:
    """Bits per weight with an fp16 scale and a b-bit zero per group."""
    size = in_features if groupsize in (-1, 0) else groupsize
    return bits + (16 + bits) / size
