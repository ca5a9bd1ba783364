"""The sweep that chose GPTQ's defaults (issue 16, "best by default"), on stories260K.

Every option is spelled out (``sym``, ``actorder``, ``mse``, ``clip_candidates``),
so the rows mean the same before and after the defaults change. Each row runs
``onecomp quantize`` (protocol calibration) and ``onecomp eval`` (ts, wt) through
the real CLI and records the quantize wall time (whole process, one thread)
and the engine's time in layer solves (``solve_s``).

    python benchmarks/gptq_defaults.py --out benchmarks/results/gptq_defaults.jsonl
    python benchmarks/gptq_defaults.py --grids "w3" --options "asym actorder mse"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, perplexities, quantize  # noqa: E402

GRIDS: dict[str, list[str]] = {
    "w4": ["wbits=4", "groupsize=-1"],
    "w4 g32": ["wbits=4", "groupsize=32"],
    "w3": ["wbits=3", "groupsize=-1"],
    "w2 g32": ["wbits=2", "groupsize=32"],
}
PLAIN = {"sym": "true", "actorder": "false", "mse": "false", "clip_candidates": "5"}
OPTIONS: dict[str, dict[str, str]] = {
    "plain": {},
    "actorder": {"actorder": "true"},
    "mse": {"mse": "true"},
    "actorder mse": {"actorder": "true", "mse": "true"},
    "asym": {"sym": "false"},
    "asym actorder": {"sym": "false", "actorder": "true"},
    "asym actorder mse": {"sym": "false", "actorder": "true", "mse": "true"},
    "asym actorder mse clip0": {
        "sym": "false",
        "actorder": "true",
        "mse": "true",
        "clip_candidates": "0",
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grids", nargs="*", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--options", nargs="*", default=list(OPTIONS), choices=list(OPTIONS))
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        for grid in args.grids:
            for option in args.options:
                settings = GRIDS[grid] + [f"{k}={v}" for k, v in (PLAIN | OPTIONS[option]).items()]
                folder = Path(tmp) / f"{grid}_{option}".replace(" ", "_")
                record = {"benchmark": "gptq_defaults", "grid": grid, "options": option}
                summary = Path(tmp) / "summary.json"
                record |= quantize(folder, "gptq", settings, extra=["--summary-json", str(summary)])
                # the layer solves alone (wall time on a shared machine is noisy)
                record["solve_s"] = json.loads(summary.read_text())["timings"].get("solve_s")
                record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
                record["settings"] = settings
                emit(record, args.out)


if __name__ == "__main__":
    main()
