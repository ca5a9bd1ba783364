"""GPTQ on the synthetic 4096×4096 layer of benchmarks.md: time (also in ref units) and error.

Prints one JSON line per configuration; ``--out`` appends them to a file.
Example: ``python benchmarks/gptq_layer_speed.py --threads 2 --out benchmarks/results/gptq_speed.jsonl``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from onecomp_gptq import GPTQ
from onecomp_gptq.gptq import GridSpec, dequantize, gptq_quantize, rtn_quantize


def ref_unit(repeats: int = 20) -> float:
    """Median seconds of one 1024×1024 float32 matrix product (the machine's yardstick)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def synthetic_layer(n: int, tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """W with per-row and per-column log-normal magnitudes, X with outlier columns."""
    g = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(n, n, generator=g)
    w *= torch.exp(0.3 * torch.randn(n, 1, generator=g))
    w *= torch.exp(0.5 * torch.randn(1, n, generator=g))
    x = torch.randn(tokens, n, generator=g) * torch.exp(torch.randn(1, n, generator=g))
    return w, x


def rel_output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w - w_hat).t()).pow(2).sum() / (x @ w.t()).pow(2).sum()).item())


#: "plain-asym" and "actorder+mse-proxy" are for comparison; the GPTQ quantizer's
#: actorder=true mse=true (default clip_candidates) is "actorder+mse"
CONFIGS = {
    "plain": dict(actorder=False, clip_grid=0, sym=True),
    "plain-asym": dict(actorder=False, clip_grid=0, sym=False),
    "actorder+mse-proxy": dict(actorder=True, clip_grid=100, sym=True),
    "actorder+mse": dict(actorder=True, clip_grid=100, sym=True, candidates=GPTQ.clip_candidates),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, x = synthetic_layer(args.size, args.tokens)
    h = 2 * x.t() @ x / x.shape[0]
    lines = []
    for name in args.configs:
        cfg = CONFIGS[name]
        spec = GridSpec(bits=args.bits, sym=cfg["sym"], clip_grid=cfg["clip_grid"])
        shrinks = GPTQ(mse=True, clip_candidates=cfg.get("candidates", 0)).row_shrinks()
        unit = ref_unit()
        t = time.perf_counter()
        out = gptq_quantize(
            w, h, spec, groupsize=args.groupsize, actorder=cfg["actorder"], row_shrinks=shrinks
        )
        seconds = time.perf_counter() - t
        unit = (unit + ref_unit()) / 2
        rtn = rtn_quantize(w, torch.diagonal(h), spec, args.groupsize)
        line = {
            "bench": "gptq_layer_speed",
            "config": name,
            "sym": cfg["sym"],
            "clip_candidates": cfg.get("candidates", 0),
            "size": args.size,
            "bits": args.bits,
            "groupsize": args.groupsize,
            "threads": args.threads,
            "seconds": round(seconds, 3),
            "ref_unit_s": round(unit, 5),
            "ref_units": round(seconds / unit, 1),
            "rel_output_error": round(rel_output_error(w, dequantize(out), x), 6),
            "rtn_rel_output_error": round(rel_output_error(w, dequantize(rtn), x), 6),
        }
        print(json.dumps(line), flush=True)
        lines.append(line)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
