"""The bit-allocation integer program: one candidate per layer, a bit budget, tied groups.

Pure numbers in, choices out; no model and no torch. Layers that must share
a candidate (fused q/k/v or gate/up of one block) are merged into one unit
before solving: choosing a candidate for the unit is exactly the constraint
x[l1, c] = x[l2, c] of the specification, with fewer variables.

    minimise   Σ_u Σ_c err[u, c]·x[u, c]
    subject to Σ_c x[u, c] = 1                         for every unit u
               Σ_u Σ_c (Σ_{l∈u} p_l·bits[l, c])·x[u, c] ≤ target·Σ_l p_l
               x binary
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

#: CBC's feasibility tolerance is absolute (~1e-7): when its answer exceeds the target
#: by rounding, the budget row is tightened by this much (then 10×) and solved again.
BUDGET_MARGIN = 1e-7


class InfeasibleTargetError(ValueError):
    """The budget is below what even the cheapest candidate of every layer needs."""

    def __init__(self, target: float, min_target: float) -> None:
        self.target, self.min_target = target, min_target
        super().__init__(
            f"target of {target:.4f} effective bits per weight is infeasible: the cheapest "
            f"candidate of every layer already needs {min_target:.4f}; the minimum feasible "
            f"target is {min_target:.4f} (raise target_bit, add a cheaper candidate, or allow "
            "the DBF fallback)"
        )


@dataclass
class Assignment:
    """The solver's answer: ``choice[l]`` is the candidate index of layer ``l``."""

    choice: list[int]
    status: str  # "optimal" or "feasible (time limit)"
    objective: float
    average_bits: float
    solve_time: float


def _units(num_layers: int, groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Union-find over the tied groups; every layer ends in exactly one unit."""
    parent = list(range(num_layers))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in groups:
        members = list(group)
        for other in members[1:]:
            parent[root(other)] = root(members[0])
    units: dict[int, list[int]] = {}
    for layer in range(num_layers):
        units.setdefault(root(layer), []).append(layer)
    return list(units.values())


def _check_shapes(
    errors: Sequence[Sequence[float]], bits: Sequence[Sequence[float]], params: Sequence[float]
) -> int:
    if not (len(errors) == len(bits) == len(params)) or not errors:
        raise ValueError("errors, bits and params must describe the same (non-zero) layers")
    num_candidates = len(errors[0])
    for row_e, row_b in zip(errors, bits, strict=True):
        if len(row_e) != num_candidates or len(row_b) != num_candidates:
            raise ValueError("every layer needs one error and one bit count per candidate")
        if not all(math.isfinite(v) for v in (*row_e, *row_b)):
            raise ValueError("errors and bits must be finite numbers")
    return num_candidates


def average_bits(bits: Sequence[Sequence[float]], params: Sequence[float], choice: Sequence[int]):
    """The parameter-weighted average effective bits of a choice."""
    total = sum(params)
    return sum(p * bits[i][c] for i, (p, c) in enumerate(zip(params, choice, strict=True))) / total


def minimum_feasible_target(
    bits: Sequence[Sequence[float]],
    params: Sequence[float],
    groups: Sequence[Sequence[int]] = (),
) -> float:
    """The lowest budget any choice meets: the cheapest candidate of every unit."""
    total = sum(params)
    need = 0.0
    for unit in _units(len(params), groups):
        need += min(sum(params[i] * bits[i][c] for i in unit) for c in range(len(bits[0])))
    return need / total


def _solver(time_limit: float):
    import pulp

    coin = getattr(pulp, "COIN_CMD", None)
    if int(pulp.__version__.split(".")[0]) >= 4 and coin is not None and coin().available():
        return coin(msg=False, timeLimit=time_limit, gapRel=0, threads=1)
    with warnings.catch_warnings():  # pulp 3.x: the bundled CBC is "deprecated" for 4.0
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0, threads=1)


def _binary(prob, name: str):
    import pulp

    if hasattr(prob, "add_variable"):  # pulp >= 3.3 (the only way in 4.0)
        return prob.add_variable(name, cat=pulp.LpBinary)
    return pulp.LpVariable(name, cat=pulp.LpBinary)


def solve_assignment(
    errors: Sequence[Sequence[float]],
    bits: Sequence[Sequence[float]],
    params: Sequence[float],
    target: float,
    groups: Sequence[Sequence[int]] = (),
    time_limit: float = 30.0,
) -> Assignment:
    """Choose one candidate per layer minimising the summed error within the bit budget.

    ``errors[i][c]`` and ``bits[i][c]`` (effective bits per weight) per layer
    and candidate, ``params[l]`` the weight count of layer ``l``; ``target``
    the allowed parameter-weighted average; ``groups`` lists of layer indices
    that must share a candidate. Raises :class:`InfeasibleTargetError` with
    the minimum feasible target when no choice fits.
    """
    import pulp

    start = time.perf_counter()
    num_candidates = _check_shapes(errors, bits, params)
    minimum = minimum_feasible_target(bits, params, groups)
    if target < minimum * (1 - 1e-12):
        raise InfeasibleTargetError(target, minimum)
    total = float(sum(params))
    units = _units(len(params), groups)
    scale = max((abs(v) for row in errors for v in row), default=1.0) or 1.0
    cost = [[sum(errors[i][c] for i in u) / scale for c in range(num_candidates)] for u in units]
    weight = [
        [sum(params[i] * bits[i][c] for i in u) / total for c in range(num_candidates)]
        for u in units
    ]
    margin = BUDGET_MARGIN * max(1.0, abs(target))
    for rhs in (target, target - margin, target - 10 * margin, minimum):
        rhs = max(rhs, minimum)
        prob = pulp.LpProblem("autobit", pulp.LpMinimize)
        x = [
            [_binary(prob, f"x_{u}_{c}") for c in range(num_candidates)] for u in range(len(units))
        ]
        prob += pulp.lpSum(
            cost[u][c] * x[u][c] for u in range(len(units)) for c in range(num_candidates)
        )
        for u in range(len(units)):
            prob += pulp.lpSum(x[u]) == 1
        prob += (
            pulp.lpSum(
                weight[u][c] * x[u][c] for u in range(len(units)) for c in range(num_candidates)
            )
            <= rhs
        )
        prob.solve(_solver(time_limit))
        if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            if rhs <= minimum:
                raise InfeasibleTargetError(target, minimum)
            continue
        choice = [0] * len(params)
        for u, unit in enumerate(units):
            picked = max(range(num_candidates), key=lambda c, u=u: x[u][c].value() or 0.0)
            for layer in unit:
                choice[layer] = picked
        achieved = average_bits(bits, params, choice)
        if achieved <= target * (1 + 1e-12) + 1e-12:
            status = (
                "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible (time limit)"
            )
            objective = sum(errors[i][c] for i, c in enumerate(choice))
            return Assignment(choice, status, objective, achieved, time.perf_counter() - start)
    # the all-cheapest choice always fits; reaching here means the solver misbehaved
    choice = [0] * len(params)
    for unit in units:
        cheapest = min(
            range(num_candidates),
            key=lambda c, unit=unit: sum(params[i] * bits[i][c] for i in unit),
        )
        for layer in unit:
            choice[layer] = cheapest
    objective = sum(errors[i][c] for i, c in enumerate(choice))
    return Assignment(
        choice,
        "fallback (cheapest)",
        objective,
        average_bits(bits, params, choice),
        time.perf_counter() - start,
    )
