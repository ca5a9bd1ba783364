"""DBF on the synthetic 1024×1024 layer of benchmarks.md: relative output error and time.

W = 0.02·N(0,1) ⊙ exp(0.3·N(0,1)) per row ⊙ exp(0.5·N(0,1)) per column;
X (4096 tokens) = N(0,1) ⊙ exp(N(0,1)) per column; H = 2XᵀX/N. Time is also
reported in "ref units" (median of 20 products of two 1024×1024 fp32
matrices on the same threads). One JSON line per configuration.

    python benchmarks/dbf_layer_speed.py                       # DBF defaults, 1.5 bits
    python benchmarks/dbf_layer_speed.py --set iters=600 --set use_balancing=true
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from onecomp_core import create_quantizer

ROOT = Path(__file__).resolve().parents[1]


def reference_seconds() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    times = []
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_layer(n: int, m: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = 0.02 * torch.randn(n, m, generator=gen)
    w = w * torch.exp(0.3 * torch.randn(n, 1, generator=gen))
    w = w * torch.exp(0.5 * torch.randn(1, m, generator=gen))
    x = torch.randn(tokens, m, generator=gen) * torch.exp(torch.randn(1, m, generator=gen))
    return w, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], help="DBF parameter key=value")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/dbf_layer_speed.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = {"target_bits": 1.5}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    quantizer = create_quantizer("dbf", **params)
    w, x = synthetic_layer(args.size, args.size, 4096, args.seed)
    hessian = 2 * x.t() @ x / x.shape[0]
    statistic = hessian if quantizer.statistics == "full" else hessian.diagonal().clone()
    layer = nn.Linear(args.size, args.size, bias=False)
    layer.weight.data.copy_(w)
    ref_before = reference_seconds()
    start = time.perf_counter()
    result = quantizer.quantize(layer, "synthetic", hessian=statistic)
    seconds = time.perf_counter() - start
    ref = (ref_before + reference_seconds()) / 2
    deq = result.compute_dequantized_weight().float()
    err = (x @ (w - deq).t()).pow(2).sum() / (x @ w.t()).pow(2).sum()
    row = {
        "bench": "dbf_layer_speed",
        "label": args.label,
        "shape": [args.size, args.size],
        "params": params,
        "threads": args.threads,
        "mid_features": result.mid_features,
        "binary_bits": result.layer_config().get("binary_bits"),
        "rel_output_error": round(err.item(), 5),
        "seconds": round(seconds, 2),
        "ref_seconds": round(ref, 5),
        "ref_units": round(seconds / ref, 1),
    }
    line = json.dumps(row)
    print(line)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
