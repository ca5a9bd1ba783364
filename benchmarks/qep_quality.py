"""QEP on stories260K through the real CLI: each configuration with and without ``--qep``.

Run from the repository root:
``python benchmarks/qep_quality.py --out benchmarks/results/qep_quality.jsonl``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, perplexities, quantize  # noqa: E402

CONFIGS = {
    "gptq w3": ("gptq", ["wbits=3", "sym=true", "actorder=false", "mse=false"]),
    "gptq w3 actorder mse": ("gptq", ["wbits=3", "sym=true", "actorder=true", "mse=true"]),
    "gptq w3 asym actorder mse": ("gptq", ["wbits=3", "sym=false", "actorder=true", "mse=true"]),
    "gptq w4": ("gptq", ["wbits=4", "sym=true", "actorder=false", "mse=false"]),
    "gptq w4 asym actorder mse": ("gptq", ["wbits=4", "sym=false", "actorder=true", "mse=true"]),
    "dbf 1.5 no finetune": ("dbf", ["target_bits=1.5", "finetune_steps=0"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            method, settings = CONFIGS[name]
            seconds = {}
            for qep in (False, True):
                folder = Path(tmp) / f"{name.replace(' ', '_')}_{qep}"
                record = {"benchmark": "qep_quality", "config": name, "qep": qep}
                record |= quantize(folder, method, settings, extra=["--qep"] if qep else [])
                record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
                seconds[qep] = record["seconds"]
                if qep:
                    record["time_ratio_vs_plain"] = round(seconds[True] / seconds[False], 2)
                emit(record, args.out)


if __name__ == "__main__":
    main()
