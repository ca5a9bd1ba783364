"""DBF on stories260K by the protocol of benchmarks.md; prints one JSON line per run.

Each run quantizes through the real Runner (128 × 256 wikitext2-valid tokens,
seed 0, lm_head kept), saves the packed model, loads it back and measures
TinyStories ("ts") and WikiText-2 ("wt", first 20,480 tokens) perplexity of
the loaded model, plus effective bits per layer, wall time, peak RSS and
bytes on disk.

    python benchmarks/dbf_quality.py --set target_bits=1.5           # defaults
    python benchmarks/dbf_quality.py --set target_bits=1.5 --set finetune_steps=0
    python benchmarks/dbf_quality.py --cli --set target_bits=1.5      # through `onecomp`
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODEL = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"
TS = ASSETS / "text" / "tinystories-valid-excerpt.txt"
WT = ASSETS / "text" / "wikitext2-test.raw"


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".safetensors")


def layer_bits(folder: Path) -> dict:
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    rows = qc["layers"]
    binary = [r.get("binary_bits") for r in rows.values() if r.get("is_dbf_quantized")]
    total = [r.get("total_bits") for r in rows.values() if r.get("is_dbf_quantized")]
    weights = [r["in_features"] * r["out_features"] for r in rows.values()]
    dense = [n for n, r in rows.items() if not r.get("is_dbf_quantized", True)]
    sizes = [
        r["in_features"] * r["out_features"] for r in rows.values() if r.get("is_dbf_quantized")
    ]
    return {
        "layers": len(rows),
        "dense_fallbacks": dense,
        "binary_bits_min": min(binary),
        "binary_bits_max": max(binary),
        "binary_bits_mean": sum(b * s for b, s in zip(binary, sizes, strict=True)) / sum(sizes),
        "total_bits_mean": sum(b * s for b, s in zip(total, sizes, strict=True)) / sum(sizes),
        "quantized_weights": sum(weights),
    }


def run_python(params: dict, out: Path) -> float:
    from onecomp_core import create_quantizer
    from onecomp_core.calibration import CalibrationConfig
    from onecomp_core.model_config import ModelConfig
    from onecomp_core.runner import Runner

    quantizer = create_quantizer("dbf", **params)
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=256, num_calibration_samples=128, seed=0
    )
    runner = Runner(
        ModelConfig(path=str(MODEL), dtype="float32", device="cpu"),
        quantizer,
        calibration,
        show_progress=False,
    )
    start = time.perf_counter()
    runner.run()
    runner.save_quantized_model(out, overwrite=True)
    return time.perf_counter() - start


def run_cli(params: dict, out: Path) -> float:
    sets = [x for k, v in params.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [
        "onecomp", "quantize", str(MODEL), "--method", "dbf", *sets,
        "--calibration", str(CALIB), "--num-samples", "128", "--max-length", "256",
        "--out", str(out), "--overwrite", "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def perplexities(folder: Path) -> dict:
    from onecomp_core.evaluation import calculate_perplexity
    from onecomp_core.serialization import load_quantized_model

    model, tok = load_quantized_model(folder, device_map="cpu")
    ts = calculate_perplexity(model, tok, TS, seqlen=512)
    wt = calculate_perplexity(model, tok, WT, seqlen=512, max_tokens=20480)
    return {"ts": round(float(ts.ppl), 3), "wt": round(float(wt.ppl), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], help="DBF parameter key=value")
    parser.add_argument("--cli", action="store_true", help="quantize through the onecomp CLI")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", help="keep the saved model here")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/dbf_quality.jsonl"))
    args = parser.parse_args()
    os.environ.setdefault("ONECOMP_QUIET", "1")
    params = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "model"
        seconds = (run_cli if args.cli else run_python)(params, out)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children)
        row = {
            "bench": "dbf_quality",
            "label": args.label,
            "model": "stories260K",
            "params": params,
            "path": "cli" if args.cli else "runner",
            **perplexities(out),
            **layer_bits(out),
            "quantize_seconds": round(seconds, 1),
            "peak_rss_mb": round(peak / 1024, 1),
            "bytes_on_disk": folder_bytes(out),
            "threads": __import__("torch").get_num_threads(),
        }
    line = json.dumps(row)
    print(line)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
