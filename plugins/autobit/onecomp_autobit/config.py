"""AutoBit's parameters as data: the seed's names and defaults, validated and saved generically.

The saved config keeps the seed's keys: the planning parameters below, plus
what the plan adds (see :meth:`AutoBitQuantizer.to_dict`). Run settings
(calibration caps, the report path, the fallback and solver knobs) are
settable but not saved, as before.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from onecomp_core.contract import Method, param

from .candidates import build_candidates, from_saved
from .fused import DEFAULT_FUSED_GROUPS, groups_problems

STRATEGIES = ("activation_aware", "ilp", "manual")
PLANNING_HESSIANS = ("auto", "full", "diag")
FISHER_LABELS = ("model", "data")


@dataclass
class AutoBitConfig(Method):
    """Choose a candidate method per layer under a bit budget (see the package README).

    ``quantizers``: candidates as Method objects or dicts ``{"method": ..., **params}``
    (default GPTQ 2/3/4/8 bit). ``target_bit``: the budget in raw bits (converted with
    the candidates' metadata, see :mod:`onecomp_autobit.target`) or, with
    ``target_bit_is_effective``, in effective bits per weight.
    """

    method: ClassVar[str] = "autobit"
    bits_param: ClassVar[str] = "target_bit"

    quantizers: list = param(factory=list, saved=False, doc="the candidates")
    assignment_strategy: str = param("activation_aware", choices=STRATEGIES)
    target_bit: float | None = param(None, float, gt=0, le=16, optional=True)
    target_bit_is_effective: bool = param(False)
    num_calib_samples: int | None = param(
        None, int, ge=1, optional=True, saved=False,
        doc="cap on the calibration sequences used for planning",
    )  # fmt: skip
    calib_seqlen: int | None = param(
        None, int, ge=1, optional=True, saved=False,
        doc="cap on the tokens per sequence used for planning",
    )  # fmt: skip
    use_curvature_b: bool = param(True, doc="weight errors by output-gradient moments b too")
    fisher_labels: str = param(
        "model", choices=FISHER_LABELS,
        doc='labels of the backward pass for b: "model" = drawn from the model itself (true '
        'Fisher: curvature of the KL to the original model), "data" = the calibration text',
    )  # fmt: skip
    fisher_samples: int = param(1, int, ge=1, doc='label draws per token with "model" labels')
    fisher_scope: str = param(
        "model", choices=("model", "block"), saved=False,
        doc='b from the loss at the head backpropagated through every block ("model"), or from '
        'block-local probes of each block\'s relative output error ("block")',
    )  # fmt: skip
    save_path: Any = param(None, optional=True, saved=False, doc="heatmap PNG or its folder")
    auto_dbf: bool = param(True, saved=False)
    dbf_threshold: float = param(2.0, float, gt=0, saved=False)
    dbf_iters: int | None = param(None, int, ge=1, optional=True, saved=False)
    fused_groups: list = param(factory=lambda: copy.deepcopy(DEFAULT_FUSED_GROUPS))
    enable_fused_groups: bool = param(True, saved=False)
    ilp_time_limit: float = param(30.0, float, gt=0, saved=False, doc="CBC's limit in seconds")
    planning_hessian: str = param(
        "auto", choices=PLANNING_HESSIANS,
        doc='Kronecker factors of the planning statistics: "diag" (a, b), "full" (XᵀX/N and '
        'GᵀG/N per layer), "auto" (full when they fit in PLANNING_FULL_BYTES)',
    )  # fmt: skip
    dividing_groups_only: bool = param(
        False,
        doc="where a candidate's group size does not divide a layer's in_features: False = the "
        "ILP chooses between the ragged last group and the per-row twin; True = per row only",
    )

    def more_problems(self) -> list[str]:
        problems = []
        if isinstance(self.quantizers, list):  # else the declared kind reports it
            try:
                build_candidates(self.quantizers)
            except ValueError as exc:
                problems.append(str(exc))
        if self.target_bit is None and self.assignment_strategy != "manual":
            problems.append(
                f"target_bit=None: strategy {self.assignment_strategy!r} needs a bit "
                "budget, e.g. target_bit=3.0"
            )
        if self.save_path is not None and not isinstance(self.save_path, str | Path):
            problems.append(f"save_path={self.save_path!r}: expected a path or null")
        if isinstance(self.fused_groups, list):
            problems += groups_problems(self.fused_groups)
        return problems

    # -- saved form ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if not self.enable_fused_groups:
            data["fused_groups"] = []
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoBitConfig:
        """The saved candidates come back as methods, each through its own ``from_dict``."""
        config = super().from_dict(data)
        config.quantizers = [from_saved(entry) for entry in data.get("candidates", [])]
        return config
