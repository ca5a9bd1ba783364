"""What ``target_bit`` means in effective bits per weight, and a method's bits at a target.

Raw targets (``target_bit_is_effective=False``, the seed's default) count
payload bits only, as "3-bit GPTQ" does; the budget adds each candidate's
metadata on top, as the seed system does for GPTQ. For layer l and
candidate c at raw target t:

* a candidate with a group size (GPTQ-like: a 16-bit scale and a b-bit zero
  per group) costs t + (16 + t)·G_l/in_l, where G_l/in_l is read from its
  own measured bits at its own nominal bits r_c:
  overhead = (e[l, c] − r_c)·(16 + t)/(16 + r_c). For group size g dividing
  in_l this is exactly t + (16 + t)/g, the seed's formula; ragged and
  per-row groups come out right because the measured bits count them;
* any other candidate with nominal bits keeps its measured overhead
  e[l, c] − r_c (e.g. DBF's scale vectors);
* a candidate without nominal bits adds nothing.

The effective target is the parameter-weighted mean over layers of the mean
over candidates: target_bit=3 with GPTQ g32 candidates equals the effective
bits of uniform 3-bit GPTQ g32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from onecomp_core.contract import Method

from .candidates import declared_groupsize, nominal_bits


def layer_overheads(
    candidates: Sequence[Method], bits: Sequence[Sequence[float]], target: float
) -> list[float]:
    """Per layer: the mean metadata overhead of the candidates at raw target ``target``."""
    out = []
    for row in bits:
        total = 0.0
        for c, candidate in enumerate(candidates):
            raw = nominal_bits(candidate)
            if raw is None:
                continue
            measured = row[c] - raw
            if declared_groupsize(candidate) is not None:
                measured *= (16.0 + target) / (16.0 + raw)
            total += measured
        out.append(total / len(candidates))
    return out


def effective_target(
    raw_target: float,
    candidates: Sequence[Method],
    bits: Sequence[Sequence[float]],
    params: Sequence[float],
) -> float:
    """The effective bits per weight a raw target stands for (see module docstring)."""
    overheads = layer_overheads(candidates, bits, raw_target)
    total = sum(params)
    return raw_target + sum(p * o for p, o in zip(params, overheads, strict=True)) / total


def _bisect(increasing: Callable[[float], float], goal: float, high: float) -> tuple[float, float]:
    """(low, high) around the x in [0, high] where increasing(x) reaches ``goal``."""
    low = 0.0
    for _ in range(100):
        mid = (low + high) / 2
        if increasing(mid) < goal:
            low = mid
        else:
            high = mid
    return low, high


def raw_for_effective(
    effective: float,
    candidates: Sequence[Method],
    bits: Sequence[Sequence[float]],
    params: Sequence[float],
) -> float:
    """Inverse of :func:`effective_target` (it increases with t), by bisection."""
    _, high = _bisect(
        lambda t: effective_target(t, candidates, bits, params), effective, max(effective, 1.0)
    )
    return high


def average_bits_at(method: Method, bits: float, shapes: dict[str, tuple[int, int]]) -> float:
    """Parameter-weighted mean of ``method.with_bits(bits).bits_for`` over the layers
    (infinite where the method does not take ``bits``)."""
    try:
        at = method.with_bits(bits)
    except ValueError:
        return float("inf")
    total = sum(n * m for n, m in shapes.values())
    return sum(n * m * at.bits_for((n, m), name) for name, (n, m) in shapes.items()) / total


def nominal_for_effective(
    method: Method, effective: float, shapes: dict[str, tuple[int, int]]
) -> float:
    """The largest nominal bits at which ``method`` stores at most ``effective`` bits per
    weight on average (0 when none does).

    E.g. DBF's sign-matrix bits whose total, its fp16 vectors included, is the
    target. The method's own ``bits_for`` is the cost model, so no formula of
    another plugin is copied here.
    """
    low, _ = _bisect(lambda b: average_bits_at(method, b, shapes), effective, effective)
    return low
