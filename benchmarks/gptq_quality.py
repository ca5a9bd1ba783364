"""GPTQ on stories260K by the protocol of benchmarks.md, through the real `onecomp` CLI.

Each named configuration runs ``onecomp quantize`` (the protocol calibration,
lm_head kept) and ``onecomp eval`` on the saved model: TinyStories ("ts", all
tokens) and WikiText-2 test ("wt", first 20,480 tokens). Prints one JSON line
per configuration (settings, ts, wt, seconds and peak RSS of the quantize
step, bytes on disk vs fp16); ``--out`` appends them.

    python benchmarks/gptq_quality.py --out benchmarks/results/gptq_quality.jsonl
    python benchmarks/gptq_quality.py --configs "gptq w3 asym actorder mse" --set percdamp=0.1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, perplexities, quantize  # noqa: E402

#: every option spelled out: the names keep their meaning whatever GPTQ's defaults are
PLAIN = ["sym=true", "actorder=false", "mse=false"]
ACT_MSE = ["sym=true", "actorder=true", "mse=true"]
ASYM_ACT_MSE = ["sym=false", "actorder=true", "mse=true"]
CONFIGS: dict[str, list[str]] = {
    "gptq w4": ["wbits=4", *PLAIN],
    "gptq w4 actorder mse": ["wbits=4", *ACT_MSE],
    "gptq w4 asym actorder mse": ["wbits=4", *ASYM_ACT_MSE],
    "gptq w3": ["wbits=3", *PLAIN],
    "gptq w3 actorder mse": ["wbits=3", *ACT_MSE],
    "gptq w3 asym actorder mse": ["wbits=3", *ASYM_ACT_MSE],
    "gptq w4 g32": ["wbits=4", "groupsize=32", *PLAIN],
    "gptq w4 g32 actorder mse": ["wbits=4", "groupsize=32", *ACT_MSE],
    "gptq w4 g32 asym actorder mse": ["wbits=4", "groupsize=32", *ASYM_ACT_MSE],
    "gptq w2 g32": ["wbits=2", "groupsize=32", *PLAIN],
    "gptq w2 g32 actorder mse": ["wbits=2", "groupsize=32", *ACT_MSE],
    "gptq w2 g32 asym actorder mse": ["wbits=2", "groupsize=32", *ASYM_ACT_MSE],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every run")
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            settings = CONFIGS[name] + args.set
            folder = Path(tmp) / name.replace(" ", "_")
            record = {"benchmark": "gptq_quality", "config": name, "settings": settings}
            record |= quantize(folder, "gptq", settings)
            record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
            emit(record, args.out)


if __name__ == "__main__":
    main()
