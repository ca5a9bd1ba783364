"""What ``target_bit`` means in effective bits per weight, and DBF's bits at a target.

Raw targets (``target_bit_is_effective=False``, the seed's default) count
payload bits only, as "3-bit GPTQ" does; the budget adds each candidate's
metadata on top, as the seed system does for GPTQ. For layer l and
candidate c at raw target t:

* a candidate with a group size (GPTQ-like: a 16-bit scale and a b-bit zero
  per group) costs t + (16 + t)·G_l/in_l, where G_l/in_l is read from its
  own measured bits at its own raw bits r_c:
  overhead = (e[l, c] − r_c)·(16 + t)/(16 + r_c). For group size g dividing
  in_l this is exactly t + (16 + t)/g, the seed's formula; ragged and
  per-row groups come out right because the measured bits count them;
* any other candidate with raw bits keeps its measured overhead e[l, c] − r_c
  (e.g. DBF's scale vectors);
* a candidate without raw bits adds nothing.

The effective target is the parameter-weighted mean over layers of the mean
over candidates: target_bit=3 with GPTQ g32 candidates equals the effective
bits of uniform 3-bit GPTQ g32.
"""

from __future__ import annotations

from collections.abc import Sequence

from onecomp_core.quantizer import Quantizer

from .candidates import declared_groupsize, raw_bits


def layer_overheads(
    candidates: Sequence[Quantizer], bits: Sequence[Sequence[float]], target: float
) -> list[float]:
    """Per layer: the mean metadata overhead of the candidates at raw target ``target``."""
    out = []
    for row in bits:
        total = 0.0
        for c, candidate in enumerate(candidates):
            raw = raw_bits(candidate)
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
    candidates: Sequence[Quantizer],
    bits: Sequence[Sequence[float]],
    params: Sequence[float],
) -> float:
    """The effective bits per weight a raw target stands for (see module docstring)."""
    overheads = layer_overheads(candidates, bits, raw_target)
    total = sum(params)
    return raw_target + sum(p * o for p, o in zip(params, overheads, strict=True)) / total


def raw_for_effective(
    effective: float,
    candidates: Sequence[Quantizer],
    bits: Sequence[Sequence[float]],
    params: Sequence[float],
) -> float:
    """Inverse of :func:`effective_target` (it increases with t), by bisection."""
    low, high = 0.0, max(effective, 1.0)
    for _ in range(100):
        mid = (low + high) / 2
        if effective_target(mid, candidates, bits, params) < effective:
            low = mid
        else:
            high = mid
    return high


def dbf_vector_overhead(out_features: int, in_features: int, binary_bits: float) -> float:
    """Bits per weight of DBF's three fp16 vectors at ``binary_bits`` (k ≈ b·nm/(n+m))."""
    n, m = out_features, in_features
    k = binary_bits * n * m / (n + m)
    return 16.0 * (n + m + k) / (n * m)


def dbf_binary_target(effective: float, shapes: Sequence[tuple[int, int]]) -> float:
    """DBF's ``target_bits`` (sign-matrix bits) whose average total, vectors included, is ``effective``.

    DBF takes one target for all layers. With k ≈ b·nm/(n+m) a layer costs
    b + 16(n+m)/(nm) + 16b/(n+m) bits per weight, linear in b, so the
    parameter-weighted average A + b·(1 + B) = e solves exactly.
    """
    total = sum(n * m for n, m in shapes)
    fixed = sum(16.0 * (n + m) for n, m in shapes) / total
    slope = 1.0 + sum(n * m * 16.0 / (n + m) for n, m in shapes) / total
    return (effective - fixed) / slope
