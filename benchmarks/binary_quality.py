"""A 1–2-bit method on stories260K through the real CLI, with and without block fine-tuning.

For each run: `onecomp quantize stories260K --method NAME --set ...` (protocol of
../shared/benchmarks.md: 128 × 256 wikitext2-valid tokens, seed 0, lm_head kept),
then `onecomp eval` of the saved folder: TinyStories ("ts") and WikiText-2 ("wt",
first 20,480 tokens) perplexity, quantize wall time (``seconds``), peak RSS,
bytes on disk, and the effective bits of every saved layer against the method's
own formula (``bits_for``): ``bits_mean`` (size-weighted) and
``bits_max_rel_dev`` (the largest |saved − formula| / formula over the layers).
One JSON line per run, appended to benchmarks/results/binary_quality.jsonl.

    python benchmarks/binary_quality.py --method onebit                    # defaults and finetune_steps=0
    python benchmarks/binary_quality.py --method onebit --set finetune_steps=200 --only-defaults
    python benchmarks/binary_quality.py --method qbb --set wbits=4 --label "4 bases"
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


def layer_bits(folder: Path, method: str, settings: list[str]) -> dict:
    """Saved effective bits per layer vs the method's ``bits_for`` formula."""
    import onecomp_core  # noqa: F401  (installs the registry)
    from onecomp_core.cli.options import parse_settings
    from onecomp_core.contract import Method

    rows = json.loads((folder / "config.json").read_text())["quantization_config"]["layers"]
    spec = Method.create(method, **parse_settings(settings))
    saved, formula, sizes = [], [], []
    for name, row in rows.items():
        if "effective_bits" not in row:
            continue
        shape = (row["out_features"], row["in_features"])
        saved.append(row["effective_bits"])
        try:
            formula.append(spec.bits_for(shape, name))
        except NotImplementedError:
            formula.append(None)
        sizes.append(shape[0] * shape[1])
    devs = [abs(s - f) / f for s, f in zip(saved, formula, strict=True) if f]
    return {
        "layers": len(rows),
        "bits_mean": round(sum(b * s for b, s in zip(saved, sizes, strict=True)) / sum(sizes), 4),
        "bits_min": round(min(saved), 4),
        "bits_max": round(max(saved), 4),
        "bits_max_rel_dev": round(max(devs), 6) if devs else None,
    }


def run(method: str, settings: list[str], label: str, keep: str | None, out: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep) if keep else Path(tmp) / "model"
        load_before = os.getloadavg()[0]
        record = {"benchmark": "binary_quality", "method": method, "label": label}
        record["settings"] = settings
        record |= quantize(folder, method, settings)
        start = time.perf_counter()
        record |= {k: round(v, 3) for k, v in perplexities(folder).items()}
        record["eval_seconds"] = round(time.perf_counter() - start, 2)
        record |= layer_bits(folder, method, settings)
        record["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
        record["command"] = f"python benchmarks/binary_quality.py --method {method} " + " ".join(
            f"--set {s}" for s in settings
        )
        emit(record, out)
        return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True, help="registered method name (onebit, cq, ...)")
    parser.add_argument("--set", action="append", default=[], help="method parameter key=value")
    parser.add_argument(
        "--only-defaults",
        action="store_true",
        help="one run with the given settings (default: also a layer-wise run, finetune_steps=0)",
    )
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", help="keep the saved model of the first run in this folder")
    parser.add_argument("--out", default=str(RESULTS / "binary_quality.jsonl"))
    args = parser.parse_args()
    run(args.method, args.set, args.label or "fine-tuned", args.keep, args.out)
    if not args.only_defaults:
        layerwise = [s for s in args.set if not s.startswith("finetune_steps=")]
        run(args.method, [*layerwise, "finetune_steps=0"], "layer-wise", None, args.out)


if __name__ == "__main__":
    main()
