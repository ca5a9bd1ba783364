"""The plan as data: which candidate (and which grouping) quantizes each layer, and why.

Planning (:mod:`onecomp_autobit.planner`) fills it; routing, the saved
config and the report read it. :meth:`Plan.variant` is the one place that
says which method really quantizes a layer, so planning (bits and error),
routing and the saved table always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onecomp_core.contract import Method

from .candidates import declared_groupsize, describe, groupsize_divides, labels, per_row_twin
from .sensitivity import Costs


@dataclass
class Plan:
    """Candidates, layer shapes (out, in) and, once planned, each layer's choice.

    ``choice[name]`` is an index into ``candidates``; ``per_row`` the layers
    quantized by the candidate's per-row twin (where its group size does not
    divide the layer's input width). ``costs`` are err[l][k] and bits[l][k]
    of activation-aware or ILP planning, column k standing for ``columns[k]``
    = (candidate index, per-row twin where the group size does not divide).
    """

    candidates: list[Method]
    shapes: dict[str, tuple[int, int]]
    dividing_groups_only: bool = False
    default_groupsize: int | None = None
    choice: dict[str, int] = field(default_factory=dict)
    per_row: set[str] = field(default_factory=set)
    columns: list[tuple[int, bool]] = field(default_factory=list)
    costs: Costs | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    effective_target: float | None = None
    achieved_bits: float | None = None
    solver_status: str | None = None
    dbf_fallback: bool = False
    twins: dict[int, Method] = field(default_factory=dict, repr=False)

    @property
    def planned(self) -> bool:
        return bool(self.choice)

    # -- which method quantizes a layer --------------------------------------------------------
    def variant(self, index: int, name: str, per_row: bool | None = None) -> Method:
        """The method candidate ``index`` really uses on layer ``name``.

        The candidate itself where its group size divides the layer's input
        width. Where it does not: its per-row twin (group size -1) when
        ``per_row`` (default: ``dividing_groups_only`` or the ILP chose the twin
        for this layer), else the candidate as given (ragged last group).
        """
        candidate = self.candidates[index]
        if groupsize_divides(candidate, self.shapes[name][1]):
            return candidate
        if per_row is None:
            per_row = self.dividing_groups_only or name in self.per_row
        if not per_row:
            return candidate
        if index not in self.twins:
            self.twins[index] = per_row_twin(candidate)
        return self.twins[index]

    def child(self, name: str) -> Method:
        if name not in self.choice:
            raise RuntimeError(f"AutoBit has no candidate for layer {name!r} (not planned)")
        return self.variant(self.choice[name], name)

    def children(self) -> list[tuple[Method, list[str]]]:
        """Each method in use with its layers, in the order of their first layer."""
        found: dict[int, tuple[Method, list[str]]] = {}
        for name in self.choice:
            method = self.child(name)
            found.setdefault(id(method), (method, []))[1].append(name)
        return list(found.values())

    def ragged_layers(self, index: int) -> list[str]:
        """Layers whose in_features candidate ``index``'s group size does not divide."""
        candidate = self.candidates[index]
        return [n for n, (_, i) in self.shapes.items() if not groupsize_divides(candidate, i)]

    def column_for(self, name: str) -> int:
        """The column of ``costs`` (see ``columns``) that layer ``name``'s choice stands for."""
        per_row = self.dividing_groups_only or name in self.per_row
        return self.columns.index((self.choice[name], per_row))

    # -- the per-layer table -------------------------------------------------------------------
    def record(self, bits: dict[str, float] | None, errors: dict[str, float] | None) -> None:
        """Fill ``rows`` (and ``achieved_bits`` when the bits are known) from ``choice``."""
        names = labels(self.candidates)
        self.rows = []
        for n, (out_features, in_features) in self.shapes.items():
            if n not in self.choice:
                continue
            candidate, used = self.candidates[self.choice[n]], self.child(n)
            size = declared_groupsize(candidate)
            note = ""
            if used is not candidate:
                note = f"per row: group size {size} does not divide {in_features}"
            elif not groupsize_divides(candidate, in_features):
                note = f"ragged last group: group size {size} does not divide {in_features}"
            self.rows.append(
                {
                    "layer": n,
                    "candidate": names[self.choice[n]],
                    "method": candidate.method,
                    "groupsize": declared_groupsize(used),
                    "bits": None if bits is None else bits[n],
                    "params": out_features * in_features,
                    "predicted_error": None if errors is None else errors[n],
                    "note": note,
                }
            )
        if bits is not None:
            total = sum(r["params"] for r in self.rows)
            self.achieved_bits = sum(r["bits"] * r["params"] for r in self.rows) / total

    def saved(self) -> dict[str, Any]:
        """What the plan adds to the saved config (the seed's keys)."""
        return {
            "effective_target": self.effective_target,
            "achieved_bits": self.achieved_bits,
            "solver_status": self.solver_status,
            "dbf_fallback": self.dbf_fallback,
            "default_groupsize": self.default_groupsize,
            "candidates": candidate_records(self.candidates),
            "assignment": {
                r["layer"]: {
                    "candidate": r["candidate"],
                    "groupsize": r["groupsize"],
                    "bits": r["bits"],
                    "predicted_error": r["predicted_error"],
                }
                for r in self.rows
            },
        }


def candidate_records(candidates: list[Method]) -> list[dict[str, Any]]:
    """Each candidate's label, method and saved config."""
    return [
        {"label": label, **describe(c)}
        for label, c in zip(labels(candidates), candidates, strict=True)
    ]
