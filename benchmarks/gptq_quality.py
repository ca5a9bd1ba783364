"""GPTQ on stories260K by the protocol of benchmarks.md, through the real `onecomp` CLI.

Each named configuration runs ``onecomp quantize`` (128 × 256 wikitext2-valid
tokens, seed 0, lm_head kept) and ``onecomp eval`` on the saved model:
TinyStories ("ts", all tokens) and WikiText-2 test ("wt", first 20,480
tokens). Prints one JSON line per configuration (config, ts, wt, seconds,
peak RSS of the quantize step, bytes on disk vs fp16); ``--out`` appends them.

    python benchmarks/gptq_quality.py                       # every configuration
    python benchmarks/gptq_quality.py --only 3b-asym-act-mse --set percdamp=0.1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MODEL = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"
TS = ASSETS / "text" / "tinystories-valid-excerpt.txt"
WT = ASSETS / "text" / "wikitext2-test.raw"

ACT_MSE = {"actorder": True, "mse": True}
ASYM_ACT_MSE = {"sym": False, "actorder": True, "mse": True}
CONFIGS: dict[str, dict] = {
    "4b": {"wbits": 4},
    "4b-act-mse": {"wbits": 4, **ACT_MSE},
    "4b-asym-act-mse": {"wbits": 4, **ASYM_ACT_MSE},
    "4b-g32": {"wbits": 4, "groupsize": 32},
    "4b-g32-asym-act-mse": {"wbits": 4, "groupsize": 32, **ASYM_ACT_MSE},
    "3b": {"wbits": 3},
    "3b-act-mse": {"wbits": 3, **ACT_MSE},
    "3b-asym-act-mse": {"wbits": 3, **ASYM_ACT_MSE},
    "2b-g32": {"wbits": 2, "groupsize": 32},
    "2b-g32-asym-act-mse": {"wbits": 2, "groupsize": 32, **ASYM_ACT_MSE},
}


def run_json(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quantize(params: dict, out: Path) -> tuple[float, float]:
    """Run `onecomp quantize`; (seconds, peak RSS in MB of the child)."""
    cmd = ["onecomp", "quantize", str(MODEL), "--method", "gptq", "--quiet", "--out", str(out)]
    cmd += ["--calibration", str(CALIB), "--num-samples", "128", "--max-length", "256"]
    for key, value in params.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"quantize failed:\n{proc.stderr[-3000:]}")
    rss = [ln for ln in proc.stderr.splitlines() if "Maximum resident set size" in ln]
    peak_mb = int(rss[-1].split(":")[-1]) / 1024 if rss else float("nan")
    return seconds, peak_mb


def evaluate(folder: Path, text: Path, max_tokens: int | None = None) -> float:
    cmd = ["onecomp", "eval", str(folder), "--ppl", str(text), "--json"]
    if max_tokens:
        cmd += ["--max-tokens", str(max_tokens)]
    return run_json(cmd)["ppl"]


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def fp16_bytes() -> int:
    return sum(f.stat().st_size for f in MODEL.glob("*.safetensors")) // 2  # fp32 on disk


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--set", action="append", default=[], help="extra KEY=VALUE for every run")
    ap.add_argument("--no-wt", action="store_true", help="skip the WikiText-2 evaluation")
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    args = ap.parse_args()
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    for name in args.only:
        params = {**CONFIGS[name], **extra}
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "model"
            seconds, peak_mb = quantize(params, out)
            line = {
                "bench": "gptq_quality",
                "config": name,
                "params": params,
                "ts": round(evaluate(out, TS), 4),
                "wt": None if args.no_wt else round(evaluate(out, WT, 20480), 3),
                "quantize_seconds": round(seconds, 1),
                "peak_rss_mb": round(peak_mb, 1),
                "disk_bytes": disk_bytes(out),
                "fp16_disk_bytes": fp16_bytes(),
            }
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
