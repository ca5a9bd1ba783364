"""Manual assignment: each candidate's own selection rules pick its layers, first match wins."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from onecomp_core.contract import Method


def assign_manually(layers: dict[str, nn.Module], candidates: Sequence[Method]) -> dict[str, int]:
    """Layer name → index of the first candidate whose rules select it (unmatched left out)."""
    picked: dict[str, int] = {}
    for index, candidate in enumerate(candidates):
        for name in candidate.select(layers):
            picked.setdefault(name, index)
    return {name: picked[name] for name in layers if name in picked}


def split_groups(
    groups: Sequence[Sequence[str]], assignment: dict[str, int], labels: Sequence[str]
) -> list[str]:
    """Fused groups whose layers got different candidates (or only some of them one)."""
    problems = []
    for group in groups:
        chosen = {name: assignment.get(name) for name in group}
        if len(set(chosen.values())) > 1:
            detail = ", ".join(
                f"{name} → {labels[c] if c is not None else 'not quantized'}"
                for name, c in chosen.items()
            )
            problems.append(f"fused group split: {detail}")
    return problems
