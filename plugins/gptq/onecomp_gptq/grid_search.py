"""Per-row grids with a clipping search: the math lives in :mod:`onecomp_core.kernels.grid_search`."""

from onecomp_core.kernels.grid_search import fit_grid, grid_from_range, row_range, shrink_factors

__all__ = ["fit_grid", "grid_from_range", "row_range", "shrink_factors"]
