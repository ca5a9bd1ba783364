"""The candidate quantizers AutoBit chooses from, made through the core registry only.

A candidate is given as a dict ``{"method": name, **parameters}`` (what
``--set quantizers='[...]'`` passes) or as a Quantizer object; either way
AutoBit works on its own copy, so the caller's list and objects are never
changed. No method is imported by name: ``create_quantizer`` finds it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from onecomp_core.plugins import create_quantizer
from onecomp_core.quantizer import Quantizer

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "gptq"
DEFAULT_BITS = (2, 3, 4, 8)
DEFAULT_GROUP_SIZES = (128, 64, 32)
#: attributes read as a candidate's nominal ("raw") bits, first found wins
RAW_BITS_ATTRIBUTES = ("wbits", "bits", "target_bits", "target_bit")
GROUP_SIZE_ATTRIBUTES = ("groupsize", "group_size")


def default_groupsize(in_features: Iterable[int]) -> int:
    """The largest of 128/64/32 that divides every width; -1 (per row) when none does."""
    widths = list(in_features)
    for size in DEFAULT_GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    return -1


def default_specs(in_features: Iterable[int]) -> tuple[list[dict[str, Any]], int]:
    """GPTQ 2/3/4/8 bit with :func:`default_groupsize`; also returns the group size."""
    size = default_groupsize(in_features)
    return [{"method": DEFAULT_METHOD, "wbits": b, "groupsize": size} for b in DEFAULT_BITS], size


def build_candidate(spec: Any, index: int) -> Quantizer:
    """A fresh quantizer for one entry of ``quantizers`` (validated)."""
    if isinstance(spec, Quantizer):
        copy = dataclasses.replace(spec, module_to_name={}, results={})
        copy.validate_params()
        return copy
    if isinstance(spec, dict):
        params = dict(spec)
        method = params.pop("method", None)
        if not isinstance(method, str) or not method:
            raise ValueError(
                f"quantizers[{index}]={spec!r}: a dict candidate needs a 'method' key, "
                'e.g. {"method": "gptq", "wbits": 4, "groupsize": 128}'
            )
        return create_quantizer(method, **params)
    raise ValueError(
        f"quantizers[{index}]={spec!r}: expected a Quantizer or a dict with a 'method' key"
    )


def build_candidates(specs: Sequence[Any]) -> list[Quantizer]:
    """All candidates, or one ValueError naming every bad entry."""
    built, problems = [], []
    for index, spec in enumerate(specs):
        try:
            built.append(build_candidate(spec, index))
        except ValueError as exc:
            text = str(exc)
            problems.append(
                text if text.startswith("quantizers[") else f"quantizers[{index}]: {text}"
            )
    if problems:
        raise ValueError("; ".join(problems))
    for candidate in built:
        if candidate.method == "autobit":
            raise ValueError("an AutoBit candidate cannot itself be AutoBit")
    return built


def _number_attribute(quantizer: Quantizer, names: Sequence[str]) -> float | None:
    for name in names:
        value = getattr(quantizer, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def raw_bits(quantizer: Quantizer) -> float | None:
    """The candidate's nominal bits (wbits, bits or target_bits), None when it has none."""
    return _number_attribute(quantizer, RAW_BITS_ATTRIBUTES)


def declared_groupsize(quantizer: Quantizer) -> int | None:
    """The candidate's group size when it has one (-1 = one group per row)."""
    value = _number_attribute(quantizer, GROUP_SIZE_ATTRIBUTES)
    return None if value is None else int(value)


def groupsize_divides(candidate: Quantizer, in_features: int) -> bool:
    """False when the candidate groups its inputs by a size that does not divide ``in_features``."""
    size = declared_groupsize(candidate)
    return size is None or size <= 0 or in_features % size == 0


def per_row_twin(candidate: Quantizer) -> Quantizer:
    """A copy of ``candidate`` with one group per row (group size -1), everything else equal.

    Offered for layers whose input width the candidate's group size does not
    divide: serving kernels for the GPTQ layout (Marlin, exllama, vLLM) need the
    group size to divide in_features, so per row is the grouping they accept
    (the only one with ``dividing_groups_only``; otherwise the ILP also gets the
    ragged last group).
    """
    name = next(n for n in GROUP_SIZE_ATTRIBUTES if isinstance(getattr(candidate, n, None), int))
    twin = dataclasses.replace(candidate, module_to_name={}, results={}, **{name: -1})
    twin.validate_params()
    return twin


def labels(candidates: Sequence[Quantizer]) -> list[str]:
    """Short unique names such as ``gptq-3b-g32`` or ``dbf-1.5b``."""
    out = []
    for candidate in candidates:
        text = candidate.method
        bits = raw_bits(candidate)
        if bits is not None:
            text += f"-{bits:g}b"
        size = declared_groupsize(candidate)
        if size is not None:
            text += f"-g{size}" if size > 0 else "-row"
        out.append(text)
    for i, text in enumerate(out):
        if out.count(text) > 1:
            out[i] = f"{text}#{i}"
    return out


def strongest_statistics(kinds: Iterable[str]) -> str:
    """The widest of "none" < "diag" < "full"."""
    order = ("none", "diag", "full")
    return max(kinds, key=order.index, default="none")


def describe(candidate: Quantizer) -> dict[str, Any]:
    """JSON record of one candidate: its method and saved config."""
    return {"method": candidate.method, **candidate.get_quant_config()}
