"""The candidate methods AutoBit chooses from, made through the core registry only.

A candidate is given as a dict ``{"method": name, **parameters}`` (what
``--set quantizers='[...]'`` passes) or as a Method object; either way
AutoBit works on its own copy, so the caller's list and objects are never
changed. No method is imported by name: ``Method.create`` finds it, and a
candidate's bits come from its own ``nominal_bits`` / ``bits_for``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from onecomp_core.contract import Method, Needs

logger = logging.getLogger(__name__)

DEFAULT_METHOD = "gptq"
#: without a target (nothing to bracket): the seed's GPTQ 2/3/4/8 bit
DEFAULT_BITS = (2, 3, 4, 8)
#: with a target t: GPTQ from floor(t) to floor(t) + DEFAULT_SPAN bits, within these bounds
DEFAULT_SPAN = 2
DEFAULT_BIT_RANGE = (2, 8)
DEFAULT_GROUP_SIZES = (128, 64, 32)
#: parameter names read as a candidate's group size (-1 = one group per row)
GROUP_SIZE_PARAMETERS = ("groupsize", "group_size")


def default_groupsize(in_features: Iterable[int]) -> int:
    """The largest of 128/64/32 that divides every width; -1 (per row) when none does."""
    widths = list(in_features)
    for size in DEFAULT_GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    return -1


def default_grouping(in_features: Iterable[int]) -> int:
    """The group size of the default candidates' grouped half (the other half is per row).

    The largest of 128/64/32 that divides every width and is a real group
    (smaller than the width) on some layer; else the largest that is a real
    group on some layer, the others getting the ragged last group or the
    per-row twin (the ILP chooses); -1 when none is (every candidate per row).
    """
    widths = list(in_features)
    for whole in (True, False):
        for size in DEFAULT_GROUP_SIZES:
            divides = [w % size == 0 for w in widths]
            if (all(divides) or not whole) and any(
                d and w > size for d, w in zip(divides, widths, strict=True)
            ):
                return size
    return -1


def default_bits(target: float | None) -> tuple[int, ...]:
    """The bit widths of the default candidates: those bracketing ``target``.

    From floor(target) to floor(target) + 2 (within 2..8): measured on
    stories260K at the 3-bit-g32 budget, candidates far below the target
    (2-bit at 3.59 bits) lose in the quantized model although their
    per-layer score says they pay (the layers' errors compound beyond the
    sum the score assumes; see the README, "Validation"). Without a target:
    2/3/4/8.
    """
    if target is None:
        return DEFAULT_BITS
    low, high = DEFAULT_BIT_RANGE
    first = min(max(int(math.floor(target)), low), high)
    return tuple(range(first, min(first + DEFAULT_SPAN, high) + 1))


def default_specs(
    in_features: Iterable[int], target: float | None = None
) -> tuple[list[dict[str, Any]], int]:
    """GPTQ at :func:`default_bits`, each at :func:`default_grouping` and per row; also
    returns that group size (per row only when it is -1)."""
    size = default_grouping(in_features)
    sizes = (size, -1) if size != -1 else (-1,)
    specs = [
        {"method": DEFAULT_METHOD, "wbits": b, "groupsize": g}
        for g in sizes
        for b in default_bits(target)
    ]
    return specs, size


def build_candidate(spec: Any, index: int) -> Method:
    """A fresh, validated method for one entry of ``quantizers``."""
    if isinstance(spec, Method):
        return spec.replace()
    if isinstance(spec, dict):
        params = dict(spec)
        method = params.pop("method", None)
        if not isinstance(method, str) or not method:
            raise ValueError(
                f"quantizers[{index}]={spec!r}: a dict candidate needs a 'method' key, "
                'e.g. {"method": "gptq", "wbits": 4, "groupsize": 128}'
            )
        return Method.create(method, **params)
    raise ValueError(
        f"quantizers[{index}]={spec!r}: expected a Method or a dict with a 'method' key"
    )


def build_candidates(specs: Sequence[Any]) -> list[Method]:
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
    if any(candidate.method == "autobit" for candidate in built):
        raise ValueError("an AutoBit candidate cannot itself be AutoBit")
    return built


def build_default_candidates(
    in_features: Iterable[int], target: float | None = None
) -> tuple[list[Method], int]:
    """GPTQ bracketing ``target`` (:func:`default_specs`), grouped and per row (reported)."""
    widths = sorted(set(in_features))
    specs, size = default_specs(widths, target)
    bits = "/".join(str(b) for b in default_bits(target))
    if size == -1:
        logger.warning(
            "AutoBit default candidates: no group size of 128/64/32 is a group of any "
            "selected layer's input width %s, so GPTQ %s bit run per row (groupsize=-1)",
            widths,
            bits,
        )
    else:
        logger.info(
            "AutoBit default candidates: GPTQ %s bit, group size %d and per row", bits, size
        )
    try:
        return build_candidates(specs), size
    except LookupError as exc:
        raise ValueError(
            f"AutoBit's default candidates are GPTQ {bits} bit, but: {exc}. "
            "Install onecomp-gptq or pass quantizers=[...]"
        ) from exc


def from_saved(entry: dict[str, Any]) -> Method:
    """A candidate from its saved record (``{"label", "method", **to_dict()}``)."""
    params = {k: v for k, v in entry.items() if k not in ("label", "method")}
    return Method.named(entry["method"]).from_dict(params)


def describe(candidate: Method) -> dict[str, Any]:
    """JSON record of one candidate: its method and saved config."""
    return {"method": candidate.method, **candidate.to_dict()}


# -- what a candidate says about itself ---------------------------------------------------
def nominal_bits(candidate: Method) -> float | None:
    """The candidate's headline bits, None when it declares none."""
    try:
        return float(candidate.nominal_bits)
    except NotImplementedError:
        return None


def group_size_parameter(candidate: Method) -> str | None:
    """The name of the candidate's group-size parameter, if it has one."""
    params = candidate.parameters()
    return next((n for n in GROUP_SIZE_PARAMETERS if params.get(n) is not None), None)


def declared_groupsize(candidate: Method) -> int | None:
    """The candidate's group size when it has one (-1 = one group per row)."""
    name = group_size_parameter(candidate)
    value = getattr(candidate, name) if name else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def groupsize_divides(candidate: Method, in_features: int) -> bool:
    """False when the candidate groups its inputs by a size that does not divide ``in_features``."""
    size = declared_groupsize(candidate)
    return size is None or size <= 0 or in_features % size == 0


def per_row_twin(candidate: Method) -> Method:
    """A copy of ``candidate`` with one group per row (group size -1), everything else equal.

    Offered for layers whose input width the candidate's group size does not
    divide: serving kernels for the GPTQ layout (Marlin, exllama, vLLM) need the
    group size to divide in_features, so per row is the grouping they accept
    (the only one with ``dividing_groups_only``; otherwise the ILP also gets the
    ragged last group).
    """
    return candidate.replace(**{group_size_parameter(candidate): -1})


def labels(candidates: Sequence[Method]) -> list[str]:
    """Short unique names such as ``gptq-3b-g32`` or ``dbf-1.5b``."""
    out = []
    for candidate in candidates:
        text = candidate.method
        bits = nominal_bits(candidate)
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


def shaped_statistics(child: Method, hessian: torch.Tensor | None) -> torch.Tensor | None:
    """H as ``child`` asks for it: the full matrix, its diagonal, or nothing."""
    kind = child.needs().inputs
    if kind == "none" or hessian is None:
        if kind == "full":
            raise RuntimeError(f"{child.method} needs the full Hessian but got none")
        return None
    if kind == "diag":
        return hessian.diagonal() if hessian.dim() == 2 else hessian
    if hessian.dim() != 2:
        raise RuntimeError(f"{child.method} needs the full Hessian but got its diagonal")
    return hessian


def combined_needs(children: Sequence[Method], own: Needs | None = None) -> Needs:
    """What serves every child: the strongest input statistic, any engine feature, the widest
    precision; ``own`` adds AutoBit's planning moments (else the first child's moments).
    Block fine-tuning: the first child's that fine-tunes (one schedule trains every twin)."""
    needs = [c.needs() for c in children]
    moments = own.moments if own is not None else None
    if moments is None:
        moments = next((n.moments for n in needs if n.moments is not None), None)
    finetune = next((n.finetune for n in needs if n.fine_tunes), None)
    return Needs(
        finetune=finetune,
        inputs=Needs.strongest([n.inputs for n in needs]),
        moments=moments,
        fp_stream=any(n.fp_stream for n in needs),
        sequential=any(n.sequential for n in needs),
        model_pass=any(n.model_pass for n in needs),
        precision=max(
            [n.precision for n in needs] or [torch.float32], key=lambda d: torch.finfo(d).bits
        ),
    )
