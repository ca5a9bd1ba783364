"""Shared pieces of the benchmark scripts: the protocol of ../shared/benchmarks.md.

Every script prints JSON lines and may append them to ``benchmarks/results/*.jsonl``;
``benchmarks/make_results.py`` turns those files into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: $ONECOMP_ASSETS, or the nearest ../shared/assets above the checkout (worktrees sit deeper)
ASSETS = Path(
    os.environ.get("ONECOMP_ASSETS")
    or next(
        (p / "shared" / "assets" for p in ROOT.parents if (p / "shared" / "assets").is_dir()),
        ROOT.parent / "shared" / "assets",
    )
)
STORIES = ASSETS / "stories260K"
CALIBRATION = ASSETS / "text" / "wikitext2-valid.tokens.txt"
TS_TEXT = ASSETS / "text" / "tinystories-valid-excerpt.txt"
WT_TEXT = ASSETS / "text" / "wikitext2-test.raw"
RESULTS = ROOT / "benchmarks" / "results"

#: calibration of the quality protocol: the first 128 windows of 256 tokens, seed 0
PROTOCOL_CALIBRATION = [
    "--calibration",
    str(CALIBRATION),
    "--num-samples",
    "128",
    "--max-length",
    "256",
    "--seed",
    "0",
    "--strategy",
    "concat_chunk",
]


def ref_unit(repeats: int = 20) -> float:
    """Median seconds of one 1024×1024 float32 product on the current threads (the yardstick)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_layer(n: int, tokens: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W with per-row and per-column log-normal magnitudes; X with outlier columns."""
    g = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(n, n, generator=g)
    w *= torch.exp(0.3 * torch.randn(n, 1, generator=g))
    w *= torch.exp(0.5 * torch.randn(1, n, generator=g))
    x = torch.randn(tokens, n, generator=g) * torch.exp(torch.randn(1, n, generator=g))
    return w, x


def rel_output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w - w_hat.float()).t()).pow(2).sum() / (x @ w.t()).pow(2).sum()).item())


_PEAK = (
    "import json, resource, sys\n"
    "from onecomp_core.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    "print(json.dumps({'peak_rss_mb': round(peak, 1)}), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def onecomp(*args: str) -> tuple[str, float, float]:
    """Run the real CLI in a fresh process: (stdout, wall seconds, peak resident MB)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *args],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "ONECOMP_QUIET": "1"},
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"onecomp {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = json.loads(proc.stderr.strip().splitlines()[-1])["peak_rss_mb"]
    return proc.stdout, seconds, peak


def perplexities(model: str | Path) -> dict[str, float]:
    """ts (all of the TinyStories excerpt) and wt (first 20,480 WikiText-2 test tokens)."""
    out_ts, _, _ = onecomp("eval", str(model), "--ppl", str(TS_TEXT), "--json")
    out_wt, _, _ = onecomp(
        "eval", str(model), "--ppl", str(WT_TEXT), "--max-tokens", "20480", "--json"
    )
    return {
        "ts": json.loads(out_ts.splitlines()[-1])["ppl"],
        "wt": json.loads(out_wt.splitlines()[-1])["ppl"],
    }


def quantize(
    out: Path,
    method: str,
    settings: list[str],
    calibrate: bool = True,
    extra: list[str] | None = None,
) -> dict:
    """Quantize stories260K through the CLI and measure time, memory and size on disk."""
    args = [
        "quantize",
        str(STORIES),
        "--method",
        method,
        "--out",
        str(out),
        "--overwrite",
        "--quiet",
    ]
    for s in settings:
        args += ["--set", s]
    if calibrate:
        args += PROTOCOL_CALIBRATION
    args += extra or []
    _, seconds, peak = onecomp(*args)
    inspect, _, _ = onecomp("inspect", str(out), "--json")
    report = json.loads(inspect)
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak,
        "bytes": report["total_bytes"],
        "fp16_bytes": report["fp16_reference_bytes"],
        "average_bits": report["average_bits"],
    }


def emit(record: dict, out: str | Path | None) -> None:
    """Print one JSON line and append it to ``out`` when given."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(line + "\n")


def reset_peak_rss() -> int:
    """Reset the kernel's peak RSS of this process (VmHWM) to its current RSS (Linux), and
    return that RSS in bytes: :func:`peak_rss_above` then measures one step alone."""
    status = Path("/proc/self/status").read_text()  # fails clearly where there is no /proc
    Path("/proc/self/clear_refs").write_text("5")
    return _vm(status, "VmRSS")


def peak_rss_above(start: int) -> int:
    """Bytes the peak RSS (VmHWM) rose above ``start`` since :func:`reset_peak_rss`."""
    return _vm(Path("/proc/self/status").read_text(), "VmHWM") - start


def _vm(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")
