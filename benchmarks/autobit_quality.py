"""AutoBit vs uniform GPTQ on stories260K at equal effective bits (protocol of benchmarks.md).

Everything goes through the CLI (`onecomp quantize` then `onecomp eval`), 128 × 256
wikitext2-valid calibration tokens, seed 0, lm_head kept. One JSON line per run
is printed and appended to benchmarks/results/autobit_quality.jsonl.

    python benchmarks/autobit_quality.py uniform 3                # GPTQ 3-bit g32
    python benchmarks/autobit_quality.py autobit 3                # budget = uniform 3-bit's bits
    python benchmarks/autobit_quality.py autobit 2 --extra '{"method":"gptq","wbits":2,"groupsize":-1}'
    python benchmarks/autobit_quality.py fallback 1.5             # DBF fallback, saved + loaded

``--gptq KEY=VALUE`` sets GPTQ options shared by the uniform run and every
candidate (e.g. --gptq actorder=true). The AutoBit budget is read from the
latest uniform run with the same bits and options in the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODEL = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"
TS = ASSETS / "text" / "tinystories-valid-excerpt.txt"
WT = ASSETS / "text" / "wikitext2-test.raw"
RESULTS = ROOT / "benchmarks" / "results" / "autobit_quality.jsonl"
GROUPSIZE = 32


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def ref_seconds() -> float:
    """Median of 20 products of two 1024² float32 matrices (benchmarks.md "ref units")."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return sorted(times)[10]


def quantize(method: str, settings: dict, out: Path) -> float:
    sets = [x for k, v in settings.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [
        "onecomp", "quantize", str(MODEL), "--method", method, *sets,
        "--calibration", str(CALIB), "--num-samples", "128", "--max-length", "256",
        "--out", str(out), "--overwrite", "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def evaluate(folder: Path, text: Path, max_tokens: int | None = None) -> float:
    cmd = ["onecomp", "eval", str(folder), "--ppl", str(text), "--json"]
    if max_tokens:
        cmd += ["--max-tokens", str(max_tokens)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["ppl"])


def table_stats(folder: Path) -> dict:
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    rows = qc["layers"]
    weights = {n: r["in_features"] * r["out_features"] for n, r in rows.items()}
    bits = sum(r["effective_bits"] * weights[n] for n, r in rows.items()) / sum(weights.values())
    methods: dict[str, int] = {}
    for r in rows.values():
        key = f"{r['method']}-{r.get('bits', r.get('target_bits'))}"
        methods[key] = methods.get(key, 0) + 1
    return {"effective_bits": round(bits, 6), "layers": len(rows), "layer_methods": methods}


def latest_uniform(bits: int, gptq: dict) -> dict:
    if RESULTS.is_file():
        for line in reversed(RESULTS.read_text().splitlines()):
            row = json.loads(line)
            if row.get("run") == "uniform" and row["bits"] == bits and row["gptq"] == gptq:
                return row
    raise SystemExit(f"run `autobit_quality.py uniform {bits}` with the same --gptq options first")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", choices=["uniform", "autobit", "fallback"])
    parser.add_argument("bits", type=float)
    parser.add_argument("--gptq", action="append", default=[], help="shared GPTQ option k=v")
    parser.add_argument("--set", action="append", default=[], help="extra AutoBit option k=v")
    parser.add_argument("--extra", action="append", default=[], help="extra candidate (JSON)")
    parser.add_argument("--wt", action="store_true", help="also WikiText-2 test ppl")
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", help="keep the saved model in this folder")
    args = parser.parse_args()
    os.environ.setdefault("ONECOMP_QUIET", "1")
    gptq = {"groupsize": GROUPSIZE} | {
        k: parse_value(v) for k, v in (s.split("=", 1) for s in args.gptq)
    }
    out = Path(args.keep or f"/tmp/autobit_bench_{args.run}_{args.bits:g}_{os.getpid()}")
    row: dict = {"bench": "autobit_quality", "run": args.run, "label": args.label, "gptq": gptq}
    if args.run == "uniform":
        row["bits"] = int(args.bits)
        seconds = quantize("gptq", {"wbits": int(args.bits), **gptq}, out)
    else:
        settings = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
        if args.run == "autobit":
            row["bits"] = int(args.bits)
            uniform = latest_uniform(int(args.bits), gptq)
            candidates = [{"method": "gptq", "wbits": b, **gptq} for b in (2, 3, 4, 8)]
            candidates += [json.loads(e) for e in args.extra]
            settings = {
                "quantizers": candidates,
                "target_bit": uniform["effective_bits"],
                "target_bit_is_effective": True,
                "save_path": str(out.with_suffix(".png")),
                **settings,
            }
            row["uniform_ts"] = uniform["ts"]
        else:
            row["bits"] = args.bits
            settings = {"target_bit": args.bits, **settings}
        row["settings"] = settings
        seconds = quantize("autobit", settings, out)
    row.update(table_stats(out))
    row["ts"] = round(evaluate(out, TS), 3)
    if args.wt:
        row["wt"] = round(evaluate(out, WT, 20480), 2)
    if "uniform_ts" in row:
        row["ts_change_vs_uniform"] = round(row["ts"] / row["uniform_ts"] - 1, 4)
    ref = ref_seconds()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row.update(
        quantize_seconds=round(seconds, 1),
        quantize_ref_units=round(seconds / ref),
        peak_rss_mb=round(peak / 1024, 1),
        bytes_on_disk=sum(f.stat().st_size for f in out.glob("*.safetensors")),
    )
    line = json.dumps(row)
    print(line)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
