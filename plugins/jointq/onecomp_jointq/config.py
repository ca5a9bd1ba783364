"""JointQ's parameters as data: the reference's names and ranges, GPTQ-ecosystem names on disk.

The saved keys ``bits``, ``group_size``, ``sym``, ``desc_act`` and
``checkpoint_format`` are what GPTQ loaders read, because a JointQ model is
stored in the GPTQ layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from onecomp_core.contract import Method, param
from onecomp_core.kernels import GridSpec

#: checkpoint format → offset subtracted from zero points when they are stored (GPTQ's)
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}


@dataclass
class JointQConfig(Method):
    """JointQ parameters (reference names where it has them).

    ``group_size`` None or −1 means one group per row; a size that does not
    divide the width leaves a shorter last group. ``regularization_lambda``
    is relative to the mean of diag H (the reference adds n·λ·R to XᵀX in
    absolute units). ``mse`` and ``clip_candidates`` configure the GPTQ start
    the way GPTQ's own parameters do.
    """

    bits: int = param(4, int, ge=1, le=8, doc="bits per weight")
    group_size: int | None = param(
        None, int, ge=1, special=(-1,), optional=True, doc="inputs per grid; None/-1: one per row"
    )
    symmetric: bool = param(False, disk="sym", doc="symmetric grid (zero point in the middle)")
    actorder: bool = param(True, disk="desc_act", doc="GPTQ start in decreasing Hessian diagonal")
    regularization_lambda: float = param(0.3, ge=0, doc="λ of H̃ = H + λ·mean(diag H)·R")
    regularization_mode: str = param("diagonal", choices=("diagonal", "identity"), doc="R")
    regularization_gamma: float = param(0.5, ge=0, doc="γ of R = diag((H_jj / mean H)^γ)")
    mse: bool = param(True, doc="clipping search for the GPTQ start's grids")
    clip_candidates: int = param(5, ge=0, doc="row range factors tried by the GPTQ start")
    percdamp: float = param(0.01, gt=0, lt=10, disk="damp_percent", doc="GPTQ start's damping")
    multistart: bool = param(True, doc="search from every clipping candidate's GPTQ start")
    max_passes: int = param(20, ge=0, doc="passes over all groups (each row stops on its own)")
    moves_per_column: int = param(10, ge=1, doc="local-search steps per group, × its width")
    checkpoint_format: str = param(
        "gptq", choices=tuple(ZERO_OFFSETS), doc="gptq: v1 zeros (stored minus one); gptq_v2: raw"
    )

    def groupsize(self) -> int:
        """The group size in GPTQ's convention (−1: one group per row)."""
        return -1 if self.group_size is None else self.group_size

    def grid_spec(self) -> GridSpec:
        # legacy v1 loaders add 1 to the stored zero without masking: keep zeros >= 1 there
        min_zero = 1 if (self.checkpoint_format == "gptq" and not self.symmetric) else 0
        return GridSpec(
            bits=self.bits, sym=self.symmetric, clip_grid=100 if self.mse else 0, min_zero=min_zero
        )

    def row_shrinks(self) -> list[float]:
        """GPTQ's row range candidates (0: its per-group proxy search), as its ``mse`` uses them."""
        if not self.mse or self.clip_candidates <= 0:
            return []
        count = self.clip_candidates
        factors = [1.0 - 0.4 * k / (count - 1) for k in range(count)] if count > 1 else [1.0]
        return [0.0, *factors]
