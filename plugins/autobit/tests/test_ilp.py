"""The integer program: same optimum as brute force, budget and ties respected, fast."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from onecomp_autobit.ilp import (
    InfeasibleTargetError,
    average_bits,
    minimum_feasible_target,
    solve_assignment,
)


def brute_force(errors, bits, params, target, groups):
    best = None
    for choice in itertools.product(range(len(errors[0])), repeat=len(errors)):
        if any(len({choice[i] for i in g}) > 1 for g in groups):
            continue
        if average_bits(bits, params, choice) > target + 1e-12:
            continue
        cost = sum(errors[i][c] for i, c in enumerate(choice))
        if best is None or cost < best:
            best = cost
    return best


def instance(rng: random.Random, layers: int, candidates: int):
    levels = sorted(rng.uniform(1.5, 9) for _ in range(candidates))
    bits = [[lv + rng.uniform(0, 0.3) for lv in levels] for _ in range(layers)]
    errors = [
        sorted((rng.lognormvariate(0, 2) for _ in range(candidates)), reverse=True)
        for _ in range(layers)
    ]
    params = [rng.choice([64, 128, 512, 4096]) for _ in range(layers)]
    return errors, bits, params


@pytest.mark.parametrize("seed", range(6))
def test_same_optimum_as_brute_force(seed):
    rng = random.Random(seed)
    errors, bits, params = instance(rng, layers=6, candidates=3)
    groups = [[0, 1, 2], [4, 5]] if seed % 2 else []
    low = minimum_feasible_target(bits, params, groups)
    high = max(average_bits(bits, params, [c] * 6) for c in range(3))
    target = low + rng.uniform(0.05, 0.9) * (high - low)
    solution = solve_assignment(errors, bits, params, target, groups)
    assert solution.status == "optimal"
    assert solution.objective == pytest.approx(brute_force(errors, bits, params, target, groups))
    assert solution.average_bits <= target
    for group in groups:
        assert len({solution.choice[i] for i in group}) == 1


def test_budget_is_tight_but_never_exceeded():
    # three layers; 4-bit everywhere costs 4.0, the target allows exactly two of them
    bits = [[2.0, 4.0]] * 3
    errors = [[10.0, 1.0], [5.0, 1.0], [1.0, 0.5]]
    params = [1, 1, 1]
    solution = solve_assignment(errors, bits, params, target=10 / 3)
    assert solution.choice == [1, 1, 0]
    assert solution.average_bits <= 10 / 3
    # the lowest feasible target gives the cheapest choice, exactly at the target
    assert solve_assignment(errors, bits, params, target=2.0).choice == [0, 0, 0]


def test_fused_group_moves_together():
    bits = [[2.0, 4.0]] * 3
    errors = [[100.0, 0.0], [0.0, 0.0], [0.0, 0.0]]  # only layer 0 cares
    solution = solve_assignment(errors, bits, [1, 1, 1], target=3.4, groups=[[0, 1]])
    # layers 0 and 1 together would cost (4+4+2)/3 = 3.33 <= 3.4: allowed and chosen
    assert solution.choice[0] == solution.choice[1] == 1
    tight = solve_assignment(errors, bits, [1, 1, 1], target=3.2, groups=[[0, 1]])
    assert tight.choice[:2] == [0, 0]  # cannot afford the pair at 4 bits


def test_infeasible_target_names_the_minimum():
    bits = [[2.5, 4.5]] * 2
    with pytest.raises(InfeasibleTargetError, match=r"minimum feasible target is 2\.5000") as info:
        solve_assignment([[1, 0], [1, 0]], bits, [1, 3], target=2.0)
    assert info.value.min_target == pytest.approx(2.5)


def test_224_layers_4_candidates_64_groups_solve_fast():
    rng = random.Random(0)
    layers, blocks = 224, 32
    bits = [[2.03, 3.04, 4.04, 8.04]] * layers
    params = [rng.choice([4096 * 4096, 4096 * 11008, 1024 * 4096]) for _ in range(layers)]
    errors = [[rng.random() * 10 ** (3 - c) for c in range(4)] for _ in range(layers)]
    groups = []
    for b in range(blocks):
        base = 7 * b
        groups += [[base, base + 1, base + 2], [base + 4, base + 5]]
    assert len(groups) == 64
    solve_assignment(errors, bits, params, 3.04, groups)  # warm the solver binary's page cache
    start = time.perf_counter()
    solution = solve_assignment(errors, bits, params, 3.04, groups)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert solution.status == "optimal"
    assert solution.average_bits <= 3.04
    for group in groups:
        assert len({solution.choice[i] for i in group}) == 1
