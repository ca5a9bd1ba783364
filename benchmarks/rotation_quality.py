"""Rotation (``--rotate hadamard``) against none, per method, on stories260K (issue 16).

Each row runs ``onecomp quantize`` (protocol calibration, lm_head kept, the
method's defaults plus the row's settings) with and without ``--rotate
hadamard`` and ``onecomp eval`` on the saved folder (ts, wt). Records go to
``benchmarks/results/frontier.jsonl`` (the issue's frontier table), each with
its command.

    python benchmarks/rotation_quality.py --out benchmarks/results/frontier.jsonl
    python benchmarks/rotation_quality.py --rows "gptq w3" --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, perplexities, quantize  # noqa: E402

#: row → (method, settings on top of the method's defaults)
ROWS: dict[str, tuple[str, list[str]]] = {
    "gptq w4 g32": ("gptq", ["wbits=4", "groupsize=32"]),
    "gptq w3": ("gptq", ["wbits=3"]),
    "gptq w2 g32": ("gptq", ["wbits=2", "groupsize=32"]),
    "rtn w4 asym": ("rtn", ["wbits=4", "sym=false"]),
    "rtn w3 asym": ("rtn", ["wbits=3", "sym=false"]),
}
COMMAND = "python benchmarks/rotation_quality.py --out benchmarks/results/frontier.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="--rotate-seed values")
    ap.add_argument("--no-baseline", action="store_true", help="only the rotated runs")
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = [None] if not args.no_baseline else []
    runs += list(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            method, settings = ROWS[row]
            for seed in runs:
                extra = [] if seed is None else ["--rotate", "hadamard", "--rotate-seed", str(seed)]
                folder = Path(tmp) / f"{row}_{seed}".replace(" ", "_")
                record = {
                    "benchmark": "rotation_quality",
                    "config": row,
                    "rotate": "none" if seed is None else f"hadamard seed {seed}",
                    "settings": settings,
                }
                record |= quantize(folder, method, settings, extra=extra)
                record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
                record["command"] = COMMAND
                emit(record, args.out)


if __name__ == "__main__":
    main()
