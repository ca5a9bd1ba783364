"""Planning: the candidates, their scores on every layer, the integer program, the DBF fallback.

Two steps, each filling a :class:`~onecomp_autobit.plan.Plan`:

* :func:`choose` — once the layers are known, before calibration: builds the
  candidates, and decides what needs no data (the manual strategy, which may
  drop layers, and the DBF fallback for targets at or below ``dbf_threshold``);
* :func:`solve` — with the planning moments (or none, for "ilp"): scores every
  candidate on every layer, converts the target and solves the program; a
  target below the cheapest candidates falls back to DBF too.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from onecomp_core.contract import LayerMoments, Method, ModelWalk

from . import report
from .candidates import (
    build_candidates,
    build_default_candidates,
    declared_groupsize,
    groupsize_divides,
    labels,
)
from .config import AutoBitConfig
from .fused import fused_layer_groups
from .ilp import InfeasibleTargetError, minimum_feasible_target, solve_assignment
from .manual import assign_manually, split_groups
from .plan import Plan
from .sensitivity import Costs, score_candidates
from .target import effective_target, nominal_for_effective, raw_for_effective

logger = logging.getLogger(__name__)

#: "auto" planning keeps the full Kronecker factors while all of them fit in this many bytes
PLANNING_FULL_BYTES = 1 << 30


def full_planning(config: AutoBitConfig, layers: dict[str, nn.Module]) -> bool:
    """Whether planning keeps XᵀX/N (and GᵀG/N) per layer, not only their diagonals."""
    if config.planning_hessian != "auto":
        return config.planning_hessian == "full"
    outputs = config.use_curvature_b
    need = sum(8 * (m.in_features**2 + outputs * m.out_features**2) for m in layers.values())
    return need <= PLANNING_FULL_BYTES


def layer_groups(config: AutoBitConfig, names: list[str]) -> list[list[str]]:
    """The fused groups among ``names`` (none when they are not enabled)."""
    if not config.enable_fused_groups:
        return []
    return fused_layer_groups(names, config.fused_groups)


# -- before calibration ------------------------------------------------------------------------
def choose(
    config: AutoBitConfig, layers: dict[str, nn.Module]
) -> tuple[Plan, dict[str, nn.Module]]:
    """The candidates; the manual assignment or an early DBF fallback. Returns the kept layers."""
    if config.quantizers:
        candidates, size = build_candidates(config.quantizers), None
    else:
        candidates, size = build_default_candidates(
            (m.in_features for m in layers.values()), config.target_bit
        )
    shapes = {n: (m.out_features, m.in_features) for n, m in layers.items()}
    plan = Plan(candidates, shapes, config.dividing_groups_only, size)
    if config.assignment_strategy == "manual":
        return plan, _manual(config, plan, layers)
    if config.auto_dbf and config.target_bit <= config.dbf_threshold:
        unit = "effective" if config.target_bit_is_effective else "raw"
        fall_back_to_dbf(
            config,
            plan,
            f"target_bit={config.target_bit:g} ({unit}) is at or below "
            f"dbf_threshold={config.dbf_threshold:g}",
        )
    return plan, layers


def _manual(
    config: AutoBitConfig, plan: Plan, layers: dict[str, nn.Module]
) -> dict[str, nn.Module]:
    assignment = assign_manually(layers, plan.candidates)
    problems = split_groups(layer_groups(config, list(layers)), assignment, labels(plan.candidates))
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
    plan.choice = assignment
    plan.shapes = {n: s for n, s in plan.shapes.items() if n in assignment}
    _record(plan, None, None)
    return {n: m for n, m in layers.items() if n in assignment}


def fall_back_to_dbf(config: AutoBitConfig, plan: Plan, reason: str) -> None:
    """Give every layer to DBF at the target (created through the registry)."""
    params: dict[str, Any] = {} if config.dbf_iters is None else {"iters": config.dbf_iters}
    try:
        dbf = Method.create("dbf", **params)
    except LookupError as exc:
        raise ValueError(
            f"{reason}: AutoBit then quantizes every layer with DBF, but the 'dbf' method "
            "is not installed (pip install onecomp-dbf). Install it, raise target_bit, or "
            "set auto_dbf=False to use only the given candidates"
        ) from exc
    target = float(config.target_bit)
    bits = (
        nominal_for_effective(dbf, target, plan.shapes)
        if config.target_bit_is_effective
        else target
    )
    if bits <= 0:
        raise ValueError(
            f"{reason}, but {config.target_bit:g} effective bits do not even pay for DBF's "
            "scale vectors on these layers; raise target_bit"
        )
    dbf = dbf.with_bits(round(bits, 6))
    logger.warning("%s: every layer is quantized with DBF at %.4g bits", reason, bits)
    plan.candidates.append(dbf)
    plan.choice = dict.fromkeys(plan.shapes, len(plan.candidates) - 1)
    plan.dbf_fallback = True
    _record(plan, {n: dbf.bits_for(shape, n) for n, shape in plan.shapes.items()}, None)


def _record(plan: Plan, bits: dict[str, float] | None, errors: dict[str, float] | None) -> None:
    plan.record(bits, errors)
    if plan.rows:
        logger.info("AutoBit assignment:\n%s", report.format_plan(plan.rows))


# -- with the planning statistics -----------------------------------------------------------
def solve(
    config: AutoBitConfig,
    plan: Plan,
    layers: dict[str, nn.Module],
    moments: dict[str, LayerMoments] | None,
    walk: ModelWalk | None = None,
    keep: dict | None = None,
) -> None:
    """Score every candidate on every layer, convert the target, solve (or fall back to DBF).

    ``walk``: score block by block through the model's walk (a streamed model); ``keep``:
    receives the scored weights (see :func:`~onecomp_autobit.sensitivity.score_candidates`)."""
    if config.assignment_strategy == "activation_aware" and moments is None:
        logger.warning("AutoBit got no calibration moments: plain weight error is used")
    if config.assignment_strategy != "activation_aware":
        moments = None
    plan.columns = _columns(plan)
    per_layer = {n: [plan.variant(i, n, twin) for i, twin in plan.columns] for n in layers}
    _log_per_row_layers(plan)
    costs = score_candidates(layers, per_layer, moments, config.use_curvature_b, walk, keep)
    plan.costs = costs
    given = _given_bits(plan, costs)
    if config.target_bit_is_effective:
        target = float(config.target_bit)
    else:
        target = effective_target(float(config.target_bit), plan.candidates, given, costs.params)
    plan.effective_target = target
    names = list(layers)
    index = {n: i for i, n in enumerate(names)}
    groups = [[index[n] for n in g] for g in layer_groups(config, names)]
    minimum = minimum_feasible_target(costs.bits, costs.params, groups)
    if target < minimum * (1 - 1e-12):
        error = _infeasible(config, plan, target, minimum, costs)
        if not config.auto_dbf:
            raise error
        fall_back_to_dbf(config, plan, f"the target is below the cheapest candidates ({error})")
        return
    solution = solve_assignment(
        costs.errors, costs.bits, costs.params, target, groups, time_limit=config.ilp_time_limit
    )
    plan.solver_status = solution.status
    chosen = [plan.columns[c] for c in solution.choice]
    plan.choice = {n: chosen[i][0] for i, n in enumerate(names)}
    plan.per_row = {
        n
        for i, n in enumerate(names)
        if chosen[i][1] and not groupsize_divides(plan.candidates[chosen[i][0]], plan.shapes[n][1])
    }  # with dividing_groups_only: every layer whose group size does not divide
    bits = {n: costs.bits[i][solution.choice[i]] for i, n in enumerate(names)}
    errors = {n: costs.errors[i][solution.choice[i]] for i, n in enumerate(names)}
    _record(plan, bits, errors)
    logger.info(
        "AutoBit: %s solution in %.3f s, %.4f effective bits (target %.4f)",
        solution.status,
        solution.solve_time,
        solution.average_bits,
        target,
    )


def _columns(plan: Plan) -> list[tuple[int, bool]]:
    """The ILP's options: (candidate index, per-row twin where the group size does not divide).

    With ``dividing_groups_only`` one column per candidate (twin where needed);
    otherwise each candidate as given, plus one "same candidate, per row"
    column for each candidate that has ragged layers. On layers the
    candidate divides, that extra column is the candidate itself (scored
    once), so a fused group tied to it means the same thing on every member.
    """
    count = len(plan.candidates)
    if plan.dividing_groups_only:
        return [(i, True) for i in range(count)]
    extra = [(i, True) for i in range(count) if plan.ragged_layers(i)]
    return [(i, False) for i in range(count)] + extra


def _given_bits(plan: Plan, costs: Costs) -> list[list[float]]:
    """bits[l][c] of the candidate columns only (one per candidate), for target conversion."""
    return [row[: len(plan.candidates)] for row in costs.bits]


def _log_per_row_layers(plan: Plan) -> None:
    names = labels(plan.candidates)
    for index, candidate in enumerate(plan.candidates):
        ragged = plan.ragged_layers(index)
        if ragged:
            widths = sorted({plan.shapes[n][1] for n in ragged})
            logger.info(
                "AutoBit: %s's group size %s does not divide in_features %s of %d layer(s) "
                "(e.g. %s): %s",
                names[index],
                declared_groupsize(candidate),
                widths,
                len(ragged),
                ragged[0],
                "they are quantized per row (groupsize -1, dividing_groups_only)"
                if plan.dividing_groups_only
                else "the ILP chooses per layer between the ragged last group and per row",
            )


def _infeasible(
    config: AutoBitConfig, plan: Plan, target: float, minimum: float, costs: Costs
) -> InfeasibleTargetError:
    error = InfeasibleTargetError(target, minimum)
    if not config.target_bit_is_effective:
        given = _given_bits(plan, costs)
        raw = raw_for_effective(minimum, plan.candidates, given, costs.params)
        error.args = (f"{error.args[0]}; in raw bits: target_bit >= {raw:.4f}",)
        error.min_raw_target = raw
    return error
