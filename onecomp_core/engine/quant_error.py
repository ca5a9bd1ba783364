"""The six error statistics of the seed API, computed from a layer's weights and Hessian."""

from __future__ import annotations

from typing import Any

import torch


def weight_errors(weight: torch.Tensor, dequantized: torch.Tensor) -> dict[str, float]:
    diff = weight.float() - dequantized.float().to(weight.device)
    sq = diff.pow(2).sum().item()
    ref = weight.float().pow(2).sum().item()
    return {
        "weight_squared_error": sq,
        "mean_weight_squared_error": sq / diff.numel(),
        "relative_weight_squared_error": sq / ref if ref > 0 else float("nan"),
    }


def output_errors(
    weight: torch.Tensor, dequantized: torch.Tensor, hessian: torch.Tensor
) -> dict[str, float]:
    """Output errors from H = (2/N) XᵀX, so no activations are needed.

    ‖X Δᵀ‖² / N = tr(Δ H Δᵀ) / 2 for the full Hessian; with only its diagonal
    the cross terms between input channels are dropped.
    """
    w = weight.float()
    delta = w - dequantized.float().to(w.device)
    h = hessian.to(w.device, torch.float32)
    if h.dim() == 1:
        num = (delta.pow(2) * h).sum().item() / 2
        den = (w.pow(2) * h).sum().item() / 2
    else:
        num = ((delta @ h) * delta).sum().item() / 2
        den = ((w @ h) * w).sum().item() / 2
    return {
        "output_squared_error": num,
        "mean_output_squared_error": num / w.shape[0],
        "relative_output_squared_error": num / den if den > 0 else float("nan"),
    }


def fill_errors(result: Any, weight: torch.Tensor, hessian: torch.Tensor | None) -> None:
    """Set a layer result's error fields: weight errors, and output errors when H is known."""
    dequantized = result.dequantize(weight.device)
    stats = weight_errors(weight, dequantized)
    if hessian is not None:
        stats.update(output_errors(weight, dequantized, hessian))
    for key, value in stats.items():
        setattr(result, key, value)
