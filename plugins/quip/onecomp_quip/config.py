"""QuIP's parameters as data: the reference's ``wbits`` / ``percdamp`` plus the grid of the solve.

The reference uses one scale per matrix (σ = 2.4·RMS) and plain LDLQ; here
the rotated weight gets GPTQ's grids (per row or per group, asymmetric,
clipping search, act-order), which is what makes 3 bits usable.
"""

from __future__ import annotations

from dataclasses import dataclass

from onecomp_core.contract import Method, param
from onecomp_core.kernels import GridSpec

#: checkpoint format → offset subtracted from zero points when they are stored (GPTQ's)
ZERO_OFFSETS = {"gptq": 1, "gptq_v2": 0}


@dataclass
class QuIPConfig(Method):
    """QuIP parameters: bit width, the seeded transforms, the grid and solve in the rotated basis."""

    wbits: int = param(4, int, ge=1, le=8, disk="bits", doc="bits per weight")
    groupsize: int = param(
        -1, int, ge=1, special=(-1,), disk="group_size", doc="inputs per grid; -1: one per row"
    )
    sym: bool = param(False, doc="symmetric grid (zero point in the middle)")
    actorder: bool = param(True, disk="desc_act", doc="LDLQ in decreasing rotated-H diagonal")
    mse: bool = param(True, doc="clipping search for the grid ranges")
    clip_candidates: int = param(5, ge=0, doc="row range factors tried with mse")
    percdamp: float = param(0.01, gt=0, lt=10, disk="damp_percent", doc="damping, × mean diag H")
    rescale: bool = param(True, doc="diagonal input rescale d = (H_jj/‖W_:,j‖²)^¼ first")
    seed: int = param(0, int, ge=0, doc="seed of the input transform (output: seed + 1)")
    #: layers (name substrings) that get incoherence processing; None: every layer. The
    #: default: layers whose output feeds a linear map (values, attention and MLP outputs),
    #: where the output error QuIP minimises is what the next layer sees (see the README)
    incoherent_layers: list | None = param(
        items=str,
        optional=True,
        factory=lambda: ["v_proj", "o_proj", "down_proj"],
        doc="name substrings of the layers to rotate; null: all",
    )
    #: a rotated layer keeps its transforms only if they lower its proxy error tr(ΔW H ΔWᵀ)
    #: below plain LDLQ's (which costs a second solve)
    only_if_better: bool = param(True, doc="keep the transforms only where they lower the error")

    def incoherent(self, name: str) -> bool:
        """Whether layer ``name`` gets the rescale and the transforms."""
        keys = self.incoherent_layers
        return keys is None or any(k in name for k in keys)

    def grid_spec(self) -> GridSpec:
        # legacy v1 loaders add 1 to the stored zero without masking: keep zeros >= 1
        return GridSpec(
            bits=self.wbits,
            sym=self.sym,
            clip_grid=100 if self.mse else 0,
            min_zero=int(not self.sym),
        )

    def row_shrinks(self) -> list[float]:
        """GPTQ's row range candidates (0: its per-group proxy search), as its ``mse`` uses them."""
        if not self.mse or self.clip_candidates <= 0:
            return []
        count = self.clip_candidates
        factors = [1.0 - 0.4 * k / (count - 1) for k in range(count)] if count > 1 else [1.0]
        return [0.0, *factors]
