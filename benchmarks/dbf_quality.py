"""DBF on stories260K through the real CLI by the protocol of benchmarks.md; one JSON line per run.

Each run is `onecomp quantize ... --method dbf --set ...` (128 × 256
wikitext2-valid tokens, seed 0, lm_head kept) then `onecomp eval` of the
saved packed model: TinyStories ("ts") and WikiText-2 ("wt", first 20,480
tokens) perplexity, effective bits per layer (binary part and with the fp16
vectors), wall time of the quantize step (``seconds``) and of the two
evaluations (``eval_seconds``), peak RSS, bytes on disk, and the load average (the
machine is shared, so times are noisy).

    python benchmarks/dbf_quality.py --set target_bits=1.5                     # defaults
    python benchmarks/dbf_quality.py --set target_bits=1.5 --set finetune_steps=0
    python benchmarks/dbf_quality.py --set target_bits=1.5 --set finetune_steps=0 --qep
    python benchmarks/dbf_quality.py --set target_bits=2.0 --out benchmarks/results/dbf_distill_data.jsonl
    python benchmarks/dbf_quality.py --set target_bits=2.0 --set distill_data=calibration \
        --out benchmarks/results/dbf_distill_data.jsonl    # the distillation before issue 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, perplexities, quantize  # noqa: E402


def layer_bits(folder: Path) -> dict:
    """Per-layer effective bits from the saved per-layer table (weighted by layer size)."""
    rows = json.loads((folder / "config.json").read_text())["quantization_config"]["layers"]
    dbf = [r for r in rows.values() if r.get("is_dbf_quantized")]
    sizes = [r["in_features"] * r["out_features"] for r in dbf]

    def mean(key: str) -> float:
        return round(sum(r[key] * s for r, s in zip(dbf, sizes, strict=True)) / sum(sizes), 4)

    return {
        "layers": len(rows),
        "dense_fallbacks": [n for n, r in rows.items() if not r.get("is_dbf_quantized", True)],
        "binary_bits_min": round(min(r["binary_bits"] for r in dbf), 4),
        "binary_bits_max": round(max(r["binary_bits"] for r in dbf), 4),
        "binary_bits_mean": mean("binary_bits"),
        "total_bits_mean": mean("total_bits"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], help="DBF parameter key=value")
    parser.add_argument("--qep", action="store_true", help="quantize with the Runner's QEP")
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", help="keep the saved model in this folder")
    parser.add_argument("--out", default=str(RESULTS / "dbf_quality.jsonl"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp) / "model"
        load_before = os.getloadavg()[0]
        record = {
            "benchmark": "dbf_quality",
            "label": args.label,
            "settings": args.set,
            "qep": args.qep,
        }
        record |= quantize(folder, "dbf", args.set, extra=["--qep"] if args.qep else None)
        start = time.perf_counter()
        record |= {k: round(v, 3) for k, v in perplexities(folder).items()}
        record["eval_seconds"] = round(time.perf_counter() - start, 2)  # both perplexities
        record |= layer_bits(folder)
        record["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        record["command"] = "python benchmarks/dbf_quality.py " + " ".join(
            [f"--set {s}" for s in args.set] + (["--qep"] if args.qep else [])
        )
        emit(record, args.out)


if __name__ == "__main__":
    main()
