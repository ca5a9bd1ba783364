"""The assignment as a per-layer table and as a heatmap (module types × blocks, colour = bits).

Written once the run is done (AutoBit's ``on_model_done``), from the plan and
the layers' results: planned and measured bits per layer, with the averages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onecomp_core.contract import LayerResult

if TYPE_CHECKING:
    from .plan import Plan

logger = logging.getLogger(__name__)

_BLOCK = re.compile(r"^(?P<prefix>.*?)\.(?P<index>\d+)\.(?P<kind>.+)$")
OUTSIDE = "other"


def split_name(name: str) -> tuple[str, str]:
    """("q_proj"-like module type, block index as text) of a layer name; block "other" outside."""
    match = _BLOCK.match(name)
    if match is None:
        return name, OUTSIDE
    return match["kind"], match["index"]


def assignment_grid(
    names: Sequence[str], bits: Sequence[float]
) -> tuple[list[str], list[str], list[list[float | None]]]:
    """(row labels = module types, column labels = blocks, bits[row][col] or None)."""
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], float] = {}
    for name, value in zip(names, bits, strict=True):
        kind, block = split_name(name)
        if kind not in rows:
            rows.append(kind)
        if block not in cols:
            cols.append(block)
        cells[(kind, block)] = value
    cols.sort(key=lambda c: (c == OUTSIDE, int(c) if c.isdigit() else 0))
    grid = [[cells.get((r, c)) for c in cols] for r in rows]
    return rows, cols, grid


PLAN_COLUMNS = ("layer", "candidate", "groupsize", "bits", "params", "predicted_error", "note")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_plan(rows: list[dict[str, Any]]) -> str:
    """The plan as aligned text columns (logged at INFO)."""
    cells = [list(PLAN_COLUMNS)] + [[_text(r.get(c)) for c in PLAN_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(PLAN_COLUMNS))]
    text = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in text)


def summary(
    plan: Plan, target_bit: float | None, results: Mapping[str, LayerResult]
) -> dict[str, Any]:
    """Plan and (once quantized) measured bits per layer, with the averages."""
    rows = []
    for row in plan.rows:
        row = dict(row)
        result = results.get(row["layer"])
        if result is not None:
            row["measured_bits"] = result.effective_bits(*plan.shapes[row["layer"]])
        rows.append(row)
    measured = [r for r in rows if r.get("measured_bits") is not None]
    total = sum(r["params"] for r in measured)
    return {
        "target_bit": target_bit,
        "effective_target": plan.effective_target,
        "planned_bits": plan.achieved_bits,
        "measured_bits": (
            sum(r["measured_bits"] * r["params"] for r in measured) / total if total else None
        ),
        "solver_status": plan.solver_status,
        "dbf_fallback": plan.dbf_fallback,
        "layers": rows,
    }


def save_outputs(save_path: str | Path, facts: dict[str, Any], strategy: str) -> Path:
    """Write the per-layer JSON table and the heatmap PNG (needs matplotlib) of ``summary``."""
    png, table = output_paths(save_path)
    save_table(table, facts)
    rows = facts["layers"]
    bits = [r.get("measured_bits") or r["bits"] or 0.0 for r in rows]
    used: dict[str, list[float]] = {}
    for r, b in zip(rows, bits, strict=True):
        used.setdefault(r["candidate"], []).append(b)
    legend = {k: sum(v) / len(v) for k, v in used.items()}
    average = facts["measured_bits"] or facts["planned_bits"]
    target = facts["effective_target"]
    title = f"AutoBit {strategy}: {average or 0:.3f} bits/weight" + (
        f" (target {target:.3f})" if target else ""
    )
    try:
        save_heatmap(png, [r["layer"] for r in rows], bits, legend, title)
    except ImportError:
        logger.warning(
            "matplotlib is not installed: no heatmap (pip install 'onecomp-autobit[plot]'); "
            "the table is in %s",
            table,
        )
    return png


def output_paths(save_path: str | Path) -> tuple[Path, Path]:
    """(heatmap PNG, table JSON): ``save_path`` is the PNG itself or a folder for both."""
    path = Path(save_path)
    if path.suffix.lower() == ".png":
        return path, path.with_suffix(".json")
    return path / "autobit_assignment.png", path / "autobit_assignment.json"


def save_table(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1))


def save_heatmap(
    path: Path,
    names: Sequence[str],
    bits: Sequence[float],
    candidates: dict[str, float],
    title: str,
) -> Path:
    """Draw the grid; ``candidates`` maps each used candidate label to its mean bits (legend)."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone
    from matplotlib.patches import Patch

    rows, cols, grid = assignment_grid(names, bits)
    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig = Figure(figsize=(max(4.0, 0.6 * len(cols) + 3), max(2.5, 0.45 * len(rows) + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("block")
    ax.set_ylabel("module type")
    if len(rows) * len(cols) <= 400:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if not np.isnan(values[i, j]):
                    r, g, b, _ = image.cmap(image.norm(values[i, j]))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(
                        j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black",
                    )  # fmt: skip
    fig.colorbar(image, ax=ax, label="effective bits per weight")
    cmap, norm = image.get_cmap(), image.norm
    handles = [
        Patch(color=cmap(norm(b)), label=f"{label} ({b:.2f} b)") for label, b in candidates.items()
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=7, title="candidate"
    )
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
