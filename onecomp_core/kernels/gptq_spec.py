"""What a GPTQ-style solve is asked (the grid of each group) and what it returns (codes, grids).

Shared by the GPTQ solve and the methods built on it (JointQ, QuIP), so each
can name the grid and the output without importing the solve's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .grid_search import fit_grid


@dataclass(frozen=True)
class GridSpec:
    """How each group's uniform grid is chosen."""

    bits: int
    sym: bool = True
    clip_grid: int = 0  # 0: min-max range; > 0: clipping search with this many steps
    norm: float = 2.4
    maxshrink: float = 0.8
    min_zero: int = 0

    def fit(
        self,
        w: torch.Tensor,
        col_weight: torch.Tensor | None = None,
        shrink: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return fit_grid(
            w,
            self.bits,
            self.sym,
            col_weight,
            grid=self.clip_grid,
            norm=self.norm,
            maxshrink=self.maxshrink,
            min_zero=self.min_zero,
            shrink=shrink,
        )


@dataclass
class GPTQOutput:
    """Codes (out, in) uint8 in the original column order, per-group fp16 scales and zeros."""

    codes: torch.Tensor
    scales: torch.Tensor  # (out, groups) fp16
    zeros: torch.Tensor  # (out, groups) uint8
    g_idx: torch.Tensor  # (in,) int32, the group of each original column
    damping: float | None  # the relative damping that made H positive definite
    fallback: str | None = None
