"""Ternary weight approximation (Li & Liu, "Ternary Weight Networks", 2016).

Each output row ``w`` becomes ``a · t`` with ``t ∈ {-1, 0, +1}``: weights whose
magnitude is below ``delta = ratio · mean|w|`` become 0, the others keep their
sign, and ``a`` is the mean magnitude of the kept weights (the least-squares
scale for that support). Pure tensor functions, testable without a model.
"""

from __future__ import annotations

import torch


def ternarize(weight: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(signs int8 (out, in) in {-1, 0, 1}, scales fp16 (out,)) for an (out, in) weight."""
    w = weight.float()
    magnitude = w.abs()
    delta = ratio * magnitude.mean(dim=1, keepdim=True)
    keep = magnitude > delta
    signs = torch.sign(w) * keep
    kept = keep.sum(dim=1).clamp(min=1)
    scales = (magnitude * keep).sum(dim=1) / kept
    return signs.to(torch.int8), scales.to(torch.float16)


def dequantize(signs: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The dense (out, in) weight in fp32."""
    return signs.float() * scales.float().unsqueeze(1)
