"""What scale.py reads back from a run: timings, the run's context, and output equality.

The engine's timings come from the ``--summary-json`` file: a ``timings``
object (``capture_s``, ``forward_s``, ``statistics_s``, ``solve_s``,
``one_forward_s``, …) when the engine writes one; otherwise only the per-layer
solve times and the quantize step's wall time are known and the rest is "n/a".
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

NA = "n/a"
ROOT = Path(__file__).resolve().parents[1]


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rounded(seconds: float) -> float:
    """Two decimals, or three significant digits below 1 s (a tiny model's forward is not 0)."""
    return round(seconds, 2) if seconds >= 1 else float(f"{seconds:.3g}")


def timing_fields(summary: dict, wall_s: float) -> dict:
    """Forwards vs solves and item 3's ratio from a summary JSON; "n/a" where not reported."""
    timings = summary.get("timings") or {}
    layer_solves = sum(row.get("time_s") or 0 for row in summary.get("layers", []))
    solve = _num(timings.get("solve_s"))
    fields = {
        "engine_s": summary.get("wall_time_s", NA),
        "layers": len(summary.get("layers", [])),
        "solve_s": _rounded(solve if solve is not None else layer_solves),
        "solve_source": "timings" if solve is not None else "layer table",
    }
    for key in ("forward_s", "one_forward_s", "capture_s", "statistics_s"):
        value = _num(timings.get(key))
        fields[key] = _rounded(value) if value is not None else NA
    fields |= {f"timings.{k}": v for k, v in timings.items() if k not in fields}
    engine = _num(fields["engine_s"])
    if engine is not None and fields["forward_s"] == NA:
        # without the engine's split: everything of the quantize step that is not a solve
        fields["not_solve_s"] = round(engine - fields["solve_s"], 2)
    one_forward = _num(fields["one_forward_s"])
    if one_forward is not None and one_forward + fields["solve_s"] > 0:
        denominator = one_forward + fields["solve_s"]
        fields["ratio_wall"] = round(wall_s / denominator, 2)
        fields["ratio_engine"] = round(engine / denominator, 2) if engine is not None else NA
    else:
        fields["ratio_wall"] = fields["ratio_engine"] = NA
    if "world_size" in summary:
        fields["world_size"] = summary["world_size"]
    return fields | device_fields(summary)


def device_fields(summary: dict) -> dict:
    """Seconds per block, mean solve seconds per projection kind and the GPU's peak memory.

    The first block's seconds include loading and calibration, so ``block_s_steady`` is
    the median of the others (the figure that scales with depth).
    """
    fields: dict = {}
    blocks = summary.get("block_s") or []
    if blocks:
        fields["block_s"] = blocks
        later = sorted(blocks[1:])
        fields["block_s_steady"] = later[len(later) // 2] if later else NA
    kinds: dict[str, list[float]] = {}
    for row in summary.get("layers", []):
        if row.get("time_s") is not None and "layer" in row:
            kinds.setdefault(row["layer"].rsplit(".", 1)[-1], []).append(row["time_s"])
    if kinds:
        fields["solve_s_per_layer"] = {k: round(sum(v) / len(v), 3) for k, v in kinds.items()}
    for key in ("cuda_peak_allocated_mb", "cuda_peak_reserved_mb"):
        if key in summary:
            fields[key] = summary[key]
    return fields


def reference_fields(record: dict, forward_s: float | str) -> dict:
    """Item 3's ratio with a forward timed apart (``reference_forward.py``), for old engines."""
    fields = {"ref_forward_s": forward_s}
    solve, engine = _num(record.get("solve_s")), _num(record.get("engine_s"))
    if _num(forward_s) is None or solve is None or record.get("status") != "ok":
        return fields | {"ratio_wall_ref": NA, "ratio_engine_ref": NA}
    denominator = forward_s + solve
    fields["ratio_wall_ref"] = round(record["wall_s"] / denominator, 2)
    fields["ratio_engine_ref"] = round(engine / denominator, 2) if engine is not None else NA
    return fields


def git_commit() -> str:
    """Short commit of the working tree, with "+dirty" when files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
    """CPU model, cores available, memory and torch version, in one cell."""
    import psutil
    import torch

    model = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = psutil.virtual_memory().total / 2**30
    return f"{model}; {cores} cores; {memory:.0f} GiB; torch {torch.__version__}"


def context(argv: list[str]) -> dict:
    """Fields every record carries: commit, machine, the command."""
    return {
        "commit": git_commit(),
        "machine": machine(),
        "command": "python benchmarks/scale.py " + " ".join(argv),
    }


def distributed_missing() -> str | None:
    """Why this onecomp cannot quantize under torchrun, or None when it can.

    The distributed engine lives in ``onecomp_core/engine/distributed.py`` of this
    checkout (design v2); without it every rank would run the whole job and write
    the same folder.
    """
    if not (ROOT / "onecomp_core" / "engine" / "distributed.py").is_file():
        return (
            "this onecomp has no distributed engine (onecomp_core.engine.distributed is "
            "missing): torchrun would run N independent copies; merge the distributed branch first"
        )
    return None


def tensors_equal(first: Path, second: Path) -> dict:
    """Whether two saved models hold the same tensors bit for bit, one tensor in memory at a time."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        keys = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(file, "pt") as f:
                keys |= {k: file for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        return keys

    a, b = index(first), index(second)
    differ = sorted(set(a) ^ set(b))
    for key in sorted(set(a) & set(b)):
        with safe_open(a[key], "pt") as fa, safe_open(b[key], "pt") as fb:
            x, y = fa.get_tensor(key), fb.get_tensor(key)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            differ.append(key)
    return {"identical": not differ and bool(a), "tensors": len(a), "differ": differ[:5]}


def compare_runs(single: dict, multi: dict) -> dict:
    """Speedup of the torchrun run over one process, and whether the outputs are identical."""
    fields: dict = {}
    if single["status"] == "ok" and multi["status"] == "ok":
        fields["speedup"] = round(single["wall_s"] / multi["wall_s"], 2)
        busiest = max(multi.get("rank_cpu_s") or [0])
        if busiest and isinstance(single.get("cpu_s"), float | int):
            # what the split allows on free cores: one process's CPU over the busiest rank's
            fields["cpu_bound_speedup"] = round(single["cpu_s"] / busiest, 2)
        equal = tensors_equal(Path(single["output"]), Path(multi["output"]))
        fields |= {"identical": equal["identical"], "tensors": equal["tensors"]}
        if equal["differ"]:
            fields["differ"] = equal["differ"]
    else:
        fields["speedup"] = fields["identical"] = NA
    return fields
