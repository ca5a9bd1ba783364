"""Fused layer groups: q/k/v and gate/up of one block, which serving engines run as one matrix.

A group is given by module-name suffixes; the layers of one block that end
with the suffixes of one group (same prefix) must get the same candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_FUSED_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
]


def fused_layer_groups(names: Iterable[str], groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """Layer names tied together, e.g. [["model.layers.0.self_attn.q_proj", ...k, ...v], ...].

    Only groups with at least two selected members are returned.
    """
    found: dict[tuple[int, str], list[str]] = {}
    for name in names:
        for index, suffixes in enumerate(groups):
            for suffix in suffixes:
                if name == suffix or name.endswith("." + suffix):
                    prefix = name[: len(name) - len(suffix)]
                    found.setdefault((index, prefix), []).append(name)
                    break
    return [members for members in found.values() if len(members) > 1]


def groups_problems(groups: object) -> list[str]:
    """Validation of the ``fused_groups`` parameter."""
    ok = isinstance(groups, list | tuple) and all(
        isinstance(g, list | tuple) and g and all(isinstance(s, str) and s for s in g)
        for g in groups
    )
    if ok:
        return []
    return [
        f"fused_groups={groups!r}: expected a list of lists of module-name suffixes, "
        'e.g. [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]]'
    ]
