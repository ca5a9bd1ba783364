"""A differentiable stand-in for a grid quantizer: the objective of a learned rotation.

SpinQuant-style training needs the loss of the model *as it will be
quantized* while the transforms change, so every linear's weight is rounded
to its grid in the forward pass and the rounding is skipped in the backward
pass (the straight-through estimator). The grid is the asymmetric min–max one
of RTN/GPTQ (``2^bits`` levels per row or per group of ``group`` columns, the
last group shorter when the width does not divide), so a rotation that
shrinks the rounding error of this grid helps the real quantizers run
afterwards.
"""

from __future__ import annotations

import torch

__all__ = ["fake_quantize", "round_ste"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(w: torch.Tensor, bits: int, group: int | None = None) -> torch.Tensor:
    """``w`` (rows × columns) rounded to an asymmetric min–max grid, differentiable (STE).

    ``group`` None, -1 or at least the width: one grid per row. The range
    always contains zero (as GPTQ's grid does); the scale takes gradients, the
    zero point does not.
    """
    rows, cols = w.shape
    size = cols if group in (None, -1) or group >= cols else int(group)
    pad = (-cols) % size
    x = torch.nn.functional.pad(w, (0, pad)).reshape(rows, -1, size)
    if pad:  # the padded tail of the last group must not widen its range
        valid = (torch.arange(cols + pad) < cols).reshape(-1, size)
        lo = torch.where(valid, x, torch.zeros_like(x)).amin(-1, keepdim=True)
        hi = torch.where(valid, x, torch.zeros_like(x)).amax(-1, keepdim=True)
    else:
        lo = x.amin(-1, keepdim=True).clamp_max(0)
        hi = x.amax(-1, keepdim=True).clamp_min(0)
    top = 2**bits - 1
    scale = ((hi - lo) / top).clamp_min(1e-10)
    zero = torch.round(-lo / scale).detach()
    q = (torch.clamp(round_ste(x / scale) + zero, 0, top) - zero) * scale
    return q.reshape(rows, -1)[:, :cols]
