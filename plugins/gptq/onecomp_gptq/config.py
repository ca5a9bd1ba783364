"""GPTQ's parameters as data: seed names and defaults, GPTQ-ecosystem names on disk.

The saved ``quantization_config`` keys are the ones transformers, GPTQModel
and vLLM read (``bits``, ``group_size``, ``desc_act``, ``damp_percent``, ...);
the field names are the seed system's. Besides the parameters, this module
resolves what they mean per layer: the bits and group size of a layer name,
its grid, and the row range factors of the clipping search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onecomp_core.contract import Method, param

from .gptq import GridSpec
from .layer import ZERO_OFFSETS

#: transformers' GPTQConfig refuses a ``damp_percent`` outside (0, 1) and so refuses the
#: whole checkpoint: a larger damping is saved under this key, ``damp_percent`` clamped
DAMP_KEY = "onecomp_damp_percent"
DAMP_CLAMP = 0.99


@dataclass
class GPTQConfig(Method):
    """GPTQ (Frantar et al., 2022) parameters, in the order they are saved.

    Per-layer overrides: ``module_wbits`` (exact layer name) beats ``mlp_wbits``
    (names containing "mlp") beats ``wbits``; ``mlp_groupsize`` likewise for
    the group size. ``mse`` turns on the clipping search: with
    ``clip_candidates`` > 0 each row's range factor is chosen by the output
    error GPTQ leaves; with 0, per group over ``q_grid`` shrink steps by the
    rounding error (exponent ``q_norm``) weighted by the Hessian diagonal.

    Defaults are the best measured settings on stories260K (issue 16, "best by
    default"; the sweep is in the plugin's README): act-order, an asymmetric grid
    and the clipping search. ``actorder=false sym=true mse=false`` is the plain GPTQ
    of the paper (and the seed's defaults).
    """

    wbits: int = param(4, int, ge=1, le=8, disk="bits", doc="bits per weight")
    groupsize: int = param(
        -1, int, ge=1, special=(-1,), disk="group_size", doc="inputs per grid; -1: one per row"
    )
    actorder: bool = param(True, disk="desc_act", doc="columns in decreasing Hessian diagonal")
    sym: bool = param(False, doc="symmetric grid (zero point in the middle)")
    checkpoint_format: str = param(
        "gptq", choices=tuple(ZERO_OFFSETS), doc="gptq: v1 zeros (stored minus one); gptq_v2: raw"
    )
    static_groups: bool = param(False, doc="group grids from the original weight")
    true_sequential: bool = param(True, doc="quantize q/k/v → o → gate/up → down in turn")
    percdamp: float = param(0.01, gt=0, lt=10, disk="damp_percent", doc="damping, × mean diag H")
    mse: bool = param(True, doc="clipping search for the grid ranges")
    q_grid: int = param(100, ge=1, doc="shrink steps of the per-group clipping search")
    q_norm: float = param(2.4, gt=0, doc="error exponent of the per-group clipping search")
    #: with mse: besides the per-group proxy search, this many row range factors
    #: (1 down to 0.6) are tried by running GPTQ on stacked copies of the rows; each
    #: row keeps the candidate with the smallest output error (costs 1 + this many
    #: GPTQ runs); 0: only the proxy search (q_grid steps, error exponent q_norm)
    clip_candidates: int = param(5, ge=0, doc="row range factors tried with mse")
    blocksize: int = param(128, ge=1, doc="columns per lazy-update block")
    mlp_wbits: int | None = param(None, int, ge=1, le=8, optional=True, doc="bits of MLP layers")
    mlp_groupsize: int | None = param(
        None, int, ge=1, special=(-1,), optional=True, doc="group size of MLP layers"
    )
    module_wbits: dict[str, int] = param(factory=dict, doc="exact layer name → bits")

    def to_dict(self) -> dict[str, Any]:
        """The parameters under their on-disk names, ``damp_percent`` within transformers' range."""
        out = super().to_dict()
        if self.percdamp >= 1:
            out["damp_percent"], out[DAMP_KEY] = DAMP_CLAMP, self.percdamp
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTQConfig:
        """Inverse of :meth:`to_dict` (a clamped ``damp_percent`` reads its true value)."""
        if DAMP_KEY in data:
            data = {**data, "damp_percent": data[DAMP_KEY]}
        return super().from_dict(data)

    def more_problems(self) -> list[str]:
        """Each per-layer bit width obeys the rule ``wbits`` declares."""
        if not isinstance(self.module_wbits, dict):
            return []  # already reported as not a mapping
        rule = self.parameters()["wbits"]
        found = [rule.problem(f"module_wbits[{n!r}]", b) for n, b in self.module_wbits.items()]
        return [p for p in found if p]

    # -- per-layer settings ----------------------------------------------------------
    def layer_bits(self, name: str) -> int:
        return self.per_layer(name, self.wbits, self.mlp_wbits, self.module_wbits)

    def layer_groupsize(self, name: str) -> int:
        return self.per_layer(name, self.groupsize, self.mlp_groupsize)

    def grid_spec(self, bits: int) -> GridSpec:
        # legacy v1 loaders add 1 to the stored zero without masking: keep zeros >= 1 there
        min_zero = 1 if (self.checkpoint_format == "gptq" and not self.sym) else 0
        return GridSpec(
            bits=bits,
            sym=self.sym,
            clip_grid=self.q_grid if self.mse else 0,
            norm=float(self.q_norm),
            min_zero=min_zero,
        )

    def row_shrinks(self) -> list[float]:
        if not self.mse or self.clip_candidates <= 0:
            return []
        count = self.clip_candidates
        factors = [1.0 - 0.4 * k / (count - 1) for k in range(count)] if count > 1 else [1.0]
        return [0.0, *factors]  # 0: the proxy search
