"""The assignment as a per-layer table and as a heatmap (module types × blocks, colour = bits)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onecomp_core.report import format_table

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


def format_plan(rows: list[dict[str, Any]]) -> str:
    columns = ["layer", "candidate", "groupsize", "bits", "params", "predicted_error", "note"]
    return format_table(rows, columns)


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
