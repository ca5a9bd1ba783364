"""Which modules of a model a method touches (its seed-named selection fields).

Rules apply as a pipeline, in this order:

1. type: the module is an instance of one of ``target_layer_types``;
2. include names (exact) and include keywords (substring): when either list
   is non-empty, a module must match one of them;
3. exclude names (exact), then exclude keywords (substring) remove modules;
4. ``num_layers`` keeps the first N in model order.

An entry starting with ``re:`` is a regular expression: full match for the
name lists, search for the keyword lists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger(__name__)


def matches(name: str, patterns: Iterable[str], keyword: bool = False) -> bool:
    """Whether ``name`` matches one of the name patterns (or, with ``keyword``, keyword ones)."""
    return _any(name, patterns, _matches_keyword if keyword else _matches_name)


def _matches_name(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern


def _matches_keyword(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return pattern in name


def _any(name: str, patterns: Iterable[str], match) -> bool:
    return any(match(name, p) for p in patterns)


@dataclass(frozen=True)
class SelectionRules:
    """Which layers a method takes (its seed-named fields, validated by the method)."""

    target_layer_types: tuple[type, ...]
    include_layer_names: Sequence[str] = ()
    include_layer_keywords: Sequence[str] = ()
    exclude_layer_names: Sequence[str] = ()
    exclude_layer_keywords: Sequence[str] = ()
    num_layers: int | None = None


def pattern_problems(label: str, patterns: Sequence[str]) -> list[str]:
    """The ``re:`` entries of a list of names or keywords that are no valid regular expression."""
    found = []
    for entry in patterns:
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                found.append(f"{label}: {entry!r} is not a valid regular expression ({exc})")
    return found


def select_layers(
    model: nn.Module | Mapping[str, nn.Module], rules: SelectionRules, strict: bool = True
) -> dict[str, nn.Module]:
    """Apply the rules to a model's modules (or to named modules already chosen).

    ``strict``: raise ValueError when the rules select nothing or cannot be met;
    otherwise return what they select, possibly nothing.
    """
    named = model.items() if isinstance(model, Mapping) else model.named_modules()
    typed = [(n, m) for n, m in named if isinstance(m, rules.target_layer_types)]
    if not strict:
        return dict(_pipeline(typed, rules))
    if not typed:
        allowed = ", ".join(t.__name__ for t in rules.target_layer_types)
        raise ValueError(f"the model has no module of the target types ({allowed})")
    names = [n for n, _ in typed]
    _check_include_names_exist(names, rules.include_layer_names)

    chosen = typed
    if rules.include_layer_names or rules.include_layer_keywords:
        chosen = [(n, m) for n, m in chosen if _included(n, rules)]
        _report_empty(chosen, "the include rules", rules)
    _check_include_not_excluded(chosen, rules)
    chosen = [(n, m) for n, m in chosen if not _excluded(n, rules)]
    _report_empty(chosen, "the exclude rules", rules)
    if rules.num_layers is not None:
        if len(chosen) < rules.num_layers:
            raise ValueError(
                f"num_layers={rules.num_layers} cannot be met: the rules select only "
                f"{len(chosen)} layer(s)"
            )
        chosen = chosen[: rules.num_layers]
    logger.debug("selected %d layer(s): %s", len(chosen), [n for n, _ in chosen])
    return dict(chosen)


def _pipeline(typed: list, rules: SelectionRules) -> list:
    """The rules without their checks: include, exclude, then the first ``num_layers``."""
    chosen = typed
    if rules.include_layer_names or rules.include_layer_keywords:
        chosen = [(n, m) for n, m in chosen if _included(n, rules)]
    chosen = [(n, m) for n, m in chosen if not _excluded(n, rules)]
    return chosen[: rules.num_layers] if rules.num_layers is not None else chosen


def _included(name: str, rules: SelectionRules) -> bool:
    return matches(name, rules.include_layer_names) or matches(
        name, rules.include_layer_keywords, keyword=True
    )


def _excluded(name: str, rules: SelectionRules) -> bool:
    return matches(name, rules.exclude_layer_names) or matches(
        name, rules.exclude_layer_keywords, keyword=True
    )


def _check_include_names_exist(names: list[str], include_names: Sequence[str]) -> None:
    missing = [p for p in include_names if not p.startswith("re:") and p not in names]
    if missing:
        sample = ", ".join(names[:5])
        raise ValueError(
            f"include_layer_names: no target layer is named {missing!r} "
            f"(layers look like: {sample}, ...)"
        )


def _check_include_not_excluded(chosen, rules: SelectionRules) -> None:
    for name, _ in chosen:
        if not any(
            _matches_name(name, p) for p in rules.include_layer_names if not p.startswith("re:")
        ):
            continue
        if _excluded(name, rules):
            raise ValueError(
                f"layer {name!r} is included by name but also excluded "
                "(exclude_layer_names / exclude_layer_keywords); remove it from the exclude "
                "lists, e.g. exclude_layer_names=[] to quantize lm_head"
            )


def _report_empty(chosen, stage: str, rules: SelectionRules) -> None:
    if not chosen:
        raise ValueError(f"no layer is left after {stage}: {rules}")
