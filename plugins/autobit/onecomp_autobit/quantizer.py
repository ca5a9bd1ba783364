"""AutoBitQuantizer: mixed precision by choosing, per layer, one of several other quantizers.

The Runner drives it like any method. ``setup`` builds the candidates through
the registry; ``prepare`` (once, before the first block) measures what each
candidate would cost and lose on each layer and solves the integer program;
then each ``quantize_layer`` call is routed to the layer's chosen candidate,
with the statistics that candidate asks for. Saved checkpoints carry each
layer's own method, so a model mixing GPTQ and DBF layers loads back with
``load_quantized_model`` without AutoBit.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from onecomp_core.plugins import UnknownMethodError, create_quantizer, get_quantizer
from onecomp_core.quantizer import Quantizer
from onecomp_core.result import QuantizationResult

from . import report
from .candidates import (
    build_candidates,
    declared_groupsize,
    default_specs,
    describe,
    groupsize_divides,
    labels,
    per_row_twin,
    strongest_statistics,
)
from .fused import DEFAULT_FUSED_GROUPS, fused_layer_groups, groups_problems
from .ilp import InfeasibleTargetError, minimum_feasible_target, solve_assignment
from .manual import assign_manually, split_groups
from .moments import FISHER_LABELS, collect_moments, limit_batches
from .sensitivity import Costs, score_candidates
from .target import dbf_binary_target, dbf_vector_overhead, effective_target, raw_for_effective

if TYPE_CHECKING:
    from onecomp_core.blockwise import BlockContext

logger = logging.getLogger(__name__)

STRATEGIES = ("activation_aware", "ilp", "manual")
PLANNING_HESSIANS = ("auto", "full", "diag")
PLANNING_FULL_BYTES = 1 << 30


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _optional_positive_int(name: str, value: Any, problems: list[str]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        problems.append(f"{name}={value!r}: expected an integer >= 1 or null")


@dataclass
class AutoBitQuantizer(Quantizer):
    """Choose a candidate quantizer per layer under a bit budget (see the package README).

    ``quantizers``: candidates as Quantizer objects or dicts ``{"method": ..., **params}``
    (default GPTQ 2/3/4/8 bit). ``target_bit``: the budget in raw bits (converted with
    the candidates' metadata, see :mod:`onecomp_autobit.target`) or, with
    ``target_bit_is_effective``, in effective bits per weight.
    """

    method: ClassVar[str] = "autobit"

    quantizers: list = field(default_factory=list)
    assignment_strategy: str = "activation_aware"
    target_bit: float | None = None
    target_bit_is_effective: bool = False
    #: cap on the Runner's calibration sequences / tokens per sequence used for planning
    num_calib_samples: int | None = None
    calib_seqlen: int | None = None
    use_curvature_b: bool = True
    #: labels of the backward pass for b: "model" = drawn from the model itself (true
    #: Fisher: curvature of the KL to the original model), "data" = the calibration
    #: text's next tokens (empirical Fisher)
    fisher_labels: str = "model"
    #: label draws per token with fisher_labels="model" (one backward pass each)
    fisher_samples: int = 1
    save_path: str | None = None
    auto_dbf: bool = True
    dbf_threshold: float = 2.0
    dbf_iters: int | None = None
    fused_groups: list = field(default_factory=lambda: copy.deepcopy(DEFAULT_FUSED_GROUPS))
    enable_fused_groups: bool = True
    ilp_time_limit: float = 30.0
    #: Kronecker factors of the planning statistics: "diag" (a, b), "full" (XᵀX/N and
    #: GᵀG/N per layer), "auto" (full when all layers' in² (+ out² with b) float64
    #: matrices fit in PLANNING_FULL_BYTES)
    planning_hessian: str = "auto"
    #: where a candidate's group size does not divide a layer's in_features: False = the
    #: ILP chooses between the candidate as given (ragged last group) and its per-row twin;
    #: True = only the per-row twin (what GPTQ-layout serving kernels accept)
    dividing_groups_only: bool = False
    flag_hessian: bool = False  # the statistics are the chosen candidates' (see `statistics`)

    # -- planning state (not parameters) ------------------------------------------------
    candidates: list[Quantizer] = field(default_factory=list, init=False, repr=False, compare=False)
    #: layer name → index into ``candidates``
    assignment: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    plan: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False, compare=False)
    effective_target: float | None = field(default=None, init=False, compare=False)
    achieved_bits: float | None = field(default=None, init=False, compare=False)
    solver_status: str | None = field(default=None, init=False, compare=False)
    dbf_fallback: bool = field(default=False, init=False, compare=False)
    default_groupsize: int | None = field(default=None, init=False, compare=False)
    #: err[l][k], bits[l][k] of the last planning (None until ``prepare``); column k is
    #: ``columns[k]`` = (candidate index, per-row twin where the group size does not divide)
    costs: Costs | None = field(default=None, init=False, repr=False, compare=False)
    columns: list[tuple[int, bool]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    #: layers quantized by a candidate's per-row twin (chosen by the ILP over the ragged
    #: last group, or forced by ``dividing_groups_only``)
    per_row_layers: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    # -- flags derived from the candidates -------------------------------------------------
    def _active(self) -> list[Quantizer]:
        """The quantizers that quantize something (all candidates before planning)."""
        if self.assignment:
            used = {id(c): c for c in map(self._child_for, self.assignment)}
            return list(used.values())
        return list(self.candidates)

    def _variant(self, index: int, name: str, per_row: bool | None = None) -> Quantizer:
        """The quantizer candidate ``index`` really uses on layer ``name``.

        The candidate itself where its group size divides the layer's input
        width. Where it does not: its per-row twin (group size -1) when
        ``per_row`` (default: ``dividing_groups_only`` or the ILP chose the twin
        for this layer), else the candidate as given (ragged last group).
        Planning (bits and error) and routing both go through here, so they
        always agree.
        """
        candidate = self.candidates[index]
        if groupsize_divides(candidate, self._layers[name].in_features):
            return candidate
        if per_row is None:
            per_row = self.dividing_groups_only or name in self.per_row_layers
        if not per_row:
            return candidate
        twin = self._twins.get(index)
        if twin is None:
            twin = per_row_twin(candidate)
            twin.module_to_name = dict(candidate.module_to_name)
            self._twins[index] = twin
        return twin

    @property
    def statistics(self) -> str:  # type: ignore[override]
        kinds = [c.statistics for c in self._active()]
        if self.assignment_strategy == "activation_aware" and not self.assignment:
            kinds.append("diag")  # the planning pass needs calibration data
        return strongest_statistics(kinds)

    @property
    def true_sequential(self) -> bool:  # type: ignore[override]
        forced = getattr(self, "_forced_sequential", False)
        return bool(forced) or any(c.true_sequential for c in self._active())

    @true_sequential.setter
    def true_sequential(self, value: bool) -> None:
        self._forced_sequential = value

    @property
    def wants_fp_stream(self) -> bool:  # type: ignore[override]
        return any(bool(getattr(c, "wants_fp_stream", False)) for c in self._active())

    # -- validation ------------------------------------------------------------------------
    def param_problems(self) -> list[str]:
        problems = super().param_problems()
        if not isinstance(self.quantizers, list | tuple):
            problems.append(
                f"quantizers={self.quantizers!r}: expected a list of quantizers or of dicts "
                'like {"method": "gptq", "wbits": 4}'
            )
        else:
            try:
                build_candidates(self.quantizers)
            except ValueError as exc:
                problems.append(str(exc))
        if self.assignment_strategy not in STRATEGIES:
            problems.append(
                f"assignment_strategy={self.assignment_strategy!r}: expected one of "
                f"{', '.join(STRATEGIES)}"
            )
        if self.target_bit is None:
            if self.assignment_strategy != "manual":
                problems.append(
                    f"target_bit=None: strategy {self.assignment_strategy!r} needs a bit "
                    "budget, e.g. target_bit=3.0"
                )
        elif not _is_number(self.target_bit) or self.target_bit <= 0:
            problems.append(f"target_bit={self.target_bit!r}: expected a number > 0")
        for name in (
            "target_bit_is_effective",
            "use_curvature_b",
            "auto_dbf",
            "enable_fused_groups",
            "dividing_groups_only",
        ):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r}: expected true or false")
        _optional_positive_int("num_calib_samples", self.num_calib_samples, problems)
        _optional_positive_int("calib_seqlen", self.calib_seqlen, problems)
        _optional_positive_int("dbf_iters", self.dbf_iters, problems)
        if self.fisher_labels not in FISHER_LABELS:
            problems.append(
                f"fisher_labels={self.fisher_labels!r}: expected one of {', '.join(FISHER_LABELS)}"
            )
        if (
            isinstance(self.fisher_samples, bool)
            or not isinstance(self.fisher_samples, int)
            or self.fisher_samples < 1
        ):
            problems.append(f"fisher_samples={self.fisher_samples!r}: expected an integer >= 1")
        if not _is_number(self.dbf_threshold) or self.dbf_threshold <= 0:
            problems.append(f"dbf_threshold={self.dbf_threshold!r}: expected a number > 0")
        if not _is_number(self.ilp_time_limit) or self.ilp_time_limit <= 0:
            problems.append(f"ilp_time_limit={self.ilp_time_limit!r}: expected seconds > 0")
        if self.save_path is not None and not isinstance(self.save_path, str | Path):
            problems.append(f"save_path={self.save_path!r}: expected a path or null")
        if self.planning_hessian not in PLANNING_HESSIANS:
            problems.append(
                f"planning_hessian={self.planning_hessian!r}: expected one of "
                f"{', '.join(PLANNING_HESSIANS)}"
            )
        problems.extend(groups_problems(self.fused_groups))
        return problems

    def _full_planning(self, layers: dict[str, nn.Module]) -> bool:
        if self.planning_hessian != "auto":
            return self.planning_hessian == "full"
        outputs = self.use_curvature_b
        need = sum(8 * (m.in_features**2 + outputs * m.out_features**2) for m in layers.values())
        return need <= PLANNING_FULL_BYTES

    # -- setup: candidates, manual assignment, early DBF fallback ------------------------
    def setup(self, model: nn.Module) -> dict[str, nn.Module]:
        layers = super().setup(model)
        self._layers = layers
        self.results, self.assignment, self.plan = {}, {}, []
        self.effective_target = self.achieved_bits = self.solver_status = None
        self.dbf_fallback = False
        self.costs, self.columns, self.per_row_layers = None, [], set()
        self.candidates = self._build_candidates(layers)
        self._twins: dict[int, Quantizer] = {}
        for candidate in self.candidates:
            candidate.module_to_name = dict(self.module_to_name)
        if any(c.hessian_dtype == torch.float64 for c in self.candidates):
            self.hessian_dtype = torch.float64
        if self.assignment_strategy == "manual":
            return self._setup_manual(model, layers)
        if self.auto_dbf and self.target_bit <= self.dbf_threshold:
            unit = "effective" if self.target_bit_is_effective else "raw"
            self._fall_back_to_dbf(
                f"target_bit={self.target_bit:g} ({unit}) is at or below "
                f"dbf_threshold={self.dbf_threshold:g}"
            )
        return layers

    def _build_candidates(self, layers: dict[str, nn.Module]) -> list[Quantizer]:
        if self.quantizers:
            self.default_groupsize = None
            return build_candidates(self.quantizers)
        specs, size = default_specs(m.in_features for m in layers.values())
        self.default_groupsize = size
        if size == -1:
            widths = sorted({m.in_features for m in layers.values()})
            logger.warning(
                "AutoBit default candidates: no group size of 128/64/32 divides every selected "
                "layer's input width %s, so GPTQ 2/3/4/8 bit run per row (groupsize=-1)",
                widths,
            )
        else:
            logger.info("AutoBit default candidates: GPTQ 2/3/4/8 bit, group size %d", size)
        try:
            return build_candidates(specs)
        except UnknownMethodError as exc:
            raise ValueError(
                f"AutoBit's default candidates are GPTQ 2/3/4/8 bit, but: {exc}. "
                "Install onecomp-gptq or pass quantizers=[...]"
            ) from exc

    def _layer_groups(self, names: list[str]) -> list[list[str]]:
        if not self.enable_fused_groups:
            return []
        return fused_layer_groups(names, self.fused_groups)

    def _setup_manual(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        assignment = assign_manually(model, list(layers), self.candidates)
        problems = split_groups(
            self._layer_groups(list(layers)), assignment, labels(self.candidates)
        )
        if problems:
            raise ValueError(
                "manual assignment splits fused groups (serving engines run them as one "
                "matrix; give all their layers to one candidate, or set "
                "enable_fused_groups=False):\n  - " + "\n  - ".join(problems)
            )
        if not assignment:
            raise ValueError("manual assignment: no candidate's selection rules match any layer")
        left = [n for n in layers if n not in assignment]
        if left:
            logger.warning(
                "manual assignment: %d layer(s) match no candidate and stay in full precision: %s",
                len(left),
                left[:5],
            )
        self.assignment = assignment
        kept = {n: m for n, m in layers.items() if n in assignment}
        self.module_to_name = {m: n for n, m in kept.items()}
        self._layers = kept
        self._record_plan(None, None)
        return kept

    def _fall_back_to_dbf(self, reason: str) -> None:
        """Give every layer to DBF at the target (through the registry)."""
        shapes = [(m.out_features, m.in_features) for m in self._layers.values()]
        if self.target_bit_is_effective:
            bits = dbf_binary_target(float(self.target_bit), shapes)
        else:
            bits = float(self.target_bit)
        if bits <= 0:
            raise ValueError(
                f"{reason}, but {self.target_bit:g} effective bits do not even pay for DBF's "
                "scale vectors on these layers; raise target_bit"
            )
        params: dict[str, Any] = {"target_bits": round(bits, 6)}
        if self.dbf_iters is not None:
            params["iters"] = self.dbf_iters
        try:
            dbf = create_quantizer("dbf", **params)
        except UnknownMethodError as exc:
            raise ValueError(
                f"{reason}: AutoBit then quantizes every layer with DBF, but the 'dbf' method "
                "is not installed (pip install onecomp-dbf). Install it, raise target_bit, or "
                "set auto_dbf=False to use only the given candidates"
            ) from exc
        logger.warning("%s: every layer is quantized with DBF at %.4g bits", reason, bits)
        dbf.module_to_name = dict(self.module_to_name)
        self.candidates.append(dbf)
        self.assignment = dict.fromkeys(self._layers, len(self.candidates) - 1)
        self.dbf_fallback = True
        planned = {
            n: bits + dbf_vector_overhead(m.out_features, m.in_features, bits)
            for n, m in self._layers.items()
        }
        self._record_plan(planned, None)

    # -- prepare: measure, solve ---------------------------------------------------------
    def prepare(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Plan, then let every chosen candidate prepare too (e.g. DBF records its teacher)."""
        self._plan(model, batches)
        for child in self._active():
            child.prepare(model, batches)

    def on_model_quantized(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Each chosen candidate's whole-model step (e.g. DBF distillation) over its own layers."""
        for child in self._active():
            child.on_model_quantized(model, batches)
            self.results.update({n: r for n, r in child.results.items() if n in self.results})

    def _plan(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        if self.assignment:  # manual, or the DBF fallback decided in setup
            return
        layers = self._layers
        moments = None
        if self.assignment_strategy == "activation_aware":
            if batches:
                used = limit_batches(batches, self.num_calib_samples, self.calib_seqlen)
                moments = collect_moments(
                    model,
                    layers,
                    used,
                    gradients=self.use_curvature_b,
                    full=self._full_planning(layers),
                    fisher_labels=self.fisher_labels,
                    samples=self.fisher_samples,
                )
            else:
                logger.warning("AutoBit got no calibration batches: plain weight error is used")
        self.columns = self._planning_columns()
        per_layer = {n: [self._variant(i, n, twin) for i, twin in self.columns] for n in layers}
        self._log_per_row_layers()
        costs = score_candidates(layers, per_layer, moments, self.use_curvature_b)
        self.costs = costs
        if self.target_bit_is_effective:
            target = float(self.target_bit)
        else:
            target = effective_target(
                float(self.target_bit), self.candidates, self._given_bits(costs), costs.params
            )
        self.effective_target = target
        names = list(layers)
        index = {n: i for i, n in enumerate(names)}
        groups = [[index[n] for n in g] for g in self._layer_groups(names)]
        minimum = minimum_feasible_target(costs.bits, costs.params, groups)
        if target < minimum * (1 - 1e-12):
            error = self._infeasible(target, minimum, costs)
            if not self.auto_dbf:
                raise error
            self._fall_back_to_dbf(f"the target is below the cheapest candidates ({error})")
            return
        solution = solve_assignment(
            costs.errors, costs.bits, costs.params, target, groups, time_limit=self.ilp_time_limit
        )
        self.solver_status = solution.status
        self.assignment = {n: self.columns[solution.choice[i]][0] for i, n in enumerate(names)}
        self.per_row_layers = {
            n
            for i, n in enumerate(names)
            if self.columns[solution.choice[i]][1]
            and not groupsize_divides(self.candidates[self.assignment[n]], layers[n].in_features)
        }  # with dividing_groups_only: every layer whose group size does not divide
        bits = {n: costs.bits[i][solution.choice[i]] for i, n in enumerate(names)}
        errors = {n: costs.errors[i][solution.choice[i]] for i, n in enumerate(names)}
        self._record_plan(bits, errors)
        logger.info(
            "AutoBit: %s solution in %.3f s, %.4f effective bits (target %.4f)",
            solution.status,
            solution.solve_time,
            solution.average_bits,
            target,
        )

    def _ragged_layers(self, index: int) -> list[str]:
        """Layers whose in_features candidate ``index``'s group size does not divide."""
        candidate = self.candidates[index]
        return [
            n for n, m in self._layers.items() if not groupsize_divides(candidate, m.in_features)
        ]

    def _planning_columns(self) -> list[tuple[int, bool]]:
        """The ILP's options: (candidate index, per-row twin where the group size does not divide).

        With ``dividing_groups_only`` one column per candidate (twin where needed);
        otherwise each candidate as given, plus one "same candidate, per row"
        column for each candidate that has ragged layers. On layers the
        candidate divides, that extra column is the candidate itself (scored
        once), so a fused group tied to it means the same thing on every member.
        """
        count = len(self.candidates)
        if self.dividing_groups_only:
            return [(i, True) for i in range(count)]
        extra = [(i, True) for i in range(count) if self._ragged_layers(i)]
        return [(i, False) for i in range(count)] + extra

    def column_for(self, name: str) -> int:
        """The column of ``costs`` (see ``columns``) that layer ``name``'s choice stands for."""
        per_row = self.dividing_groups_only or name in self.per_row_layers
        return self.columns.index((self.assignment[name], per_row))

    def _given_bits(self, costs: Costs) -> list[list[float]]:
        """bits[l][c] of the candidate columns only (one per candidate), for target conversion."""
        return [row[: len(self.candidates)] for row in costs.bits]

    def _log_per_row_layers(self) -> None:
        names = labels(self.candidates)
        for index, candidate in enumerate(self.candidates):
            ragged = self._ragged_layers(index)
            if ragged:
                widths = sorted({self._layers[n].in_features for n in ragged})
                logger.info(
                    "AutoBit: %s's group size %s does not divide in_features %s of %d layer(s) "
                    "(e.g. %s): %s",
                    names[index],
                    declared_groupsize(candidate),
                    widths,
                    len(ragged),
                    ragged[0],
                    "they are quantized per row (groupsize -1, dividing_groups_only)"
                    if self.dividing_groups_only
                    else "the ILP chooses per layer between the ragged last group and per row",
                )

    def _infeasible(self, target: float, minimum: float, costs) -> InfeasibleTargetError:
        error = InfeasibleTargetError(target, minimum)
        if not self.target_bit_is_effective:
            raw = raw_for_effective(minimum, self.candidates, self._given_bits(costs), costs.params)
            error.args = (f"{error.args[0]}; in raw bits: target_bit >= {raw:.4f}",)
            error.min_raw_target = raw
        return error

    def _record_plan(self, bits: dict[str, float] | None, errors: dict[str, float] | None) -> None:
        names = labels(self.candidates)
        self.plan = []
        for n, m in self._layers.items():
            if n not in self.assignment:
                continue
            candidate, used = self.candidates[self.assignment[n]], self._child_for(n)
            note = ""
            if used is not candidate:
                note = (
                    f"per row: group size {declared_groupsize(candidate)} "
                    f"does not divide {m.in_features}"
                )
            elif not groupsize_divides(candidate, m.in_features):
                note = (
                    f"ragged last group: group size {declared_groupsize(candidate)} "
                    f"does not divide {m.in_features}"
                )
            self.plan.append(
                {
                    "layer": n,
                    "candidate": names[self.assignment[n]],
                    "method": candidate.method,
                    "groupsize": declared_groupsize(used),
                    "bits": None if bits is None else bits[n],
                    "params": m.weight.numel(),
                    "predicted_error": None if errors is None else errors[n],
                    "note": note,
                }
            )
        if bits is not None:
            total = sum(r["params"] for r in self.plan)
            self.achieved_bits = sum(r["bits"] * r["params"] for r in self.plan) / total
        if self.plan:
            logger.info("AutoBit assignment:\n%s", report.format_plan(self.plan))

    # -- routing ---------------------------------------------------------------------------------
    def _child_for(self, name: str | None) -> Quantizer:
        if name is None or name not in self.assignment:
            raise RuntimeError(
                f"AutoBit has no candidate for layer {name!r}: call setup() and prepare() first"
            )
        return self._variant(self.assignment[name], name)

    @staticmethod
    def _statistics_for(child: Quantizer, hessian: torch.Tensor | None) -> torch.Tensor | None:
        kind = child.statistics
        if kind == "none" or hessian is None:
            if kind == "full":
                raise RuntimeError(f"{child.method} needs the full Hessian but got none")
            return None
        if kind == "diag":
            return hessian.diagonal() if hessian.dim() == 2 else hessian
        if hessian.dim() != 2:
            raise RuntimeError(f"{child.method} needs the full Hessian but got its diagonal")
        return hessian

    def quantize_layer(
        self,
        module: nn.Module,
        input: torch.Tensor | None = None,
        hessian: torch.Tensor | None = None,
    ) -> QuantizationResult:
        child = self._child_for(self.module_to_name.get(module))
        result = child.quantize_layer(
            module, input=input, hessian=self._statistics_for(child, hessian)
        )
        result._method = getattr(result, "_method", None) or child.method
        return result

    def quantize(
        self,
        module: nn.Module,
        name: str,
        hessian: torch.Tensor | None = None,
        input: torch.Tensor | None = None,
    ) -> QuantizationResult:
        result = super().quantize(module, name, hessian=hessian, input=input)
        self._child_for(name).results[name] = result
        if self.save_path is not None and set(self.results) >= set(self.assignment):
            self.save_outputs(self.save_path)
        return result

    def on_block_quantized(self, context: BlockContext) -> None:
        children: dict[int, tuple[Quantizer, dict[str, nn.Module]]] = {}
        for n, m in context.layers.items():
            if n in self.assignment:
                child = self._child_for(n)
                children.setdefault(id(child), (child, {}))[1][n] = m
        for child, mine in children.values():
            sub = dataclasses.replace(
                context, layers=mine, results={n: context.results[n] for n in mine}
            )
            child.on_block_quantized(sub)
            context.results.update(sub.results)
            self.results.update(sub.results)

    def create_inference_layer(
        self, result: QuantizationResult, linear_module: nn.Module, **kwargs: Any
    ) -> nn.Module:
        name = self.module_to_name.get(linear_module)
        method = getattr(result, "_method", None)
        if name in self.assignment:
            child = self._child_for(name)
        else:
            child = next((c for c in self.candidates if c.method == method), None)
            if child is None:
                if method is None:
                    raise RuntimeError("AutoBit cannot tell which method produced this result")
                child = get_quantizer(method)()
        return child.create_inference_layer(result, linear_module, **kwargs)

    @classmethod
    def build_inference_layer(cls, row: dict[str, Any]) -> nn.Module:
        method = row.get("method")
        if method in (None, cls.method):
            raise ValueError("an AutoBit layer row must name the candidate method that made it")
        return get_quantizer(method).build_inference_layer(row)

    # -- outputs ----------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Plan and (once quantized) measured bits per layer, with the averages."""
        rows = []
        for row in self.plan:
            row = dict(row)
            result = self.results.get(row["layer"])
            module = self._layers.get(row["layer"]) if hasattr(self, "_layers") else None
            if result is not None and module is not None:
                row["measured_bits"] = result.effective_bits(*module.weight.shape)
            rows.append(row)
        measured = [r for r in rows if r.get("measured_bits") is not None]
        total = sum(r["params"] for r in measured)
        return {
            "target_bit": self.target_bit,
            "effective_target": self.effective_target,
            "planned_bits": self.achieved_bits,
            "measured_bits": (
                sum(r["measured_bits"] * r["params"] for r in measured) / total if total else None
            ),
            "solver_status": self.solver_status,
            "dbf_fallback": self.dbf_fallback,
            "layers": rows,
        }

    def save_outputs(self, save_path: str | Path) -> Path:
        """Write the heatmap PNG (needs matplotlib) and the per-layer JSON table."""
        png, table = report.output_paths(save_path)
        summary = self.summary()
        report.save_table(table, summary)
        rows = summary["layers"]
        bits = [r.get("measured_bits") or r["bits"] or 0.0 for r in rows]
        used: dict[str, list[float]] = {}
        for r, b in zip(rows, bits, strict=True):
            used.setdefault(r["candidate"], []).append(b)
        legend = {k: sum(v) / len(v) for k, v in used.items()}
        average = summary["measured_bits"] or summary["planned_bits"]
        title = f"AutoBit {self.assignment_strategy}: {average or 0:.3f} bits/weight" + (
            f" (target {self.effective_target:.3f})" if self.effective_target else ""
        )
        try:
            report.save_heatmap(png, [r["layer"] for r in rows], bits, legend, title)
        except ImportError:
            logger.warning(
                "matplotlib is not installed: no heatmap (pip install 'onecomp-autobit[plot]'); "
                "the table is in %s",
                table,
            )
        return png

    def get_quant_config(self) -> dict[str, Any]:
        names = labels(self.candidates)
        return {
            "assignment_strategy": self.assignment_strategy,
            "target_bit": self.target_bit,
            "target_bit_is_effective": self.target_bit_is_effective,
            "effective_target": self.effective_target,
            "achieved_bits": self.achieved_bits,
            "solver_status": self.solver_status,
            "dbf_fallback": self.dbf_fallback,
            "default_groupsize": self.default_groupsize,
            "dividing_groups_only": self.dividing_groups_only,
            "use_curvature_b": self.use_curvature_b,
            "planning_hessian": self.planning_hessian,
            "fisher_labels": self.fisher_labels,
            "fisher_samples": self.fisher_samples,
            "fused_groups": self.fused_groups if self.enable_fused_groups else [],
            "candidates": [
                {"label": label, **describe(c)}
                for label, c in zip(names, self.candidates, strict=True)
            ],
            "assignment": {
                r["layer"]: {
                    "candidate": r["candidate"],
                    "groupsize": r["groupsize"],
                    "bits": r["bits"],
                    "predicted_error": r["predicted_error"],
                }
                for r in self.plan
            },
        }

    @classmethod
    def from_quant_config(cls, config: dict[str, Any]) -> AutoBitQuantizer:
        """Rebuild with the saved candidates (each through its own ``from_quant_config``)."""
        candidates = []
        for entry in config.get("candidates", []):
            params = {k: v for k, v in entry.items() if k not in ("label", "method")}
            candidates.append(get_quantizer(entry["method"]).from_quant_config(params))
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {k: v for k, v in config.items() if k in known and k != "quantizers"}
        return cls(quantizers=candidates, **kwargs)
