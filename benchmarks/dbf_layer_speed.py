"""DBF on the synthetic 1024×1024 layer of benchmarks.md: relative output error and time.

The layer, its inputs and the yardstick ("ref units": the median 1024×1024
fp32 product on the same threads) come from ``common``. One JSON line per
configuration.

    python benchmarks/dbf_layer_speed.py                       # DBF defaults, 1.5 bits
    python benchmarks/dbf_layer_speed.py --set iters=600 --set use_balancing=true
    python benchmarks/dbf_layer_speed.py --size 4096 --device cuda   # a Llama-2-7B attention layer
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, ref_unit, rel_output_error, synthetic_layer  # noqa: E402

from onecomp_core import create_quantizer  # noqa: E402
from onecomp_core.contract import LayerJob  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], help="DBF parameter key=value")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the solve runs")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=str(RESULTS / "dbf_layer_speed.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params: dict = {"target_bits": 1.5}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    quantizer = create_quantizer("dbf", **params)
    w, x = synthetic_layer(args.size, seed=args.seed)
    hessian = 2 * x.t() @ x / x.shape[0]
    statistic = hessian if quantizer.needs().inputs == "full" else hessian.diagonal().clone()
    device = torch.device(args.device)
    layer = nn.Linear(args.size, args.size, bias=False, device=device)
    layer.weight.data.copy_(w)
    statistic = statistic.to(device)
    ref_before = ref_unit()
    _synchronize(device)
    start = time.perf_counter()
    result = quantizer.quantize(LayerJob("synthetic", layer, hessian=statistic))
    _synchronize(device)
    seconds = time.perf_counter() - start
    ref = (ref_before + ref_unit()) / 2
    w_hat = result.compute_dequantized_weight().float().cpu()
    record = {
        "benchmark": "dbf_layer_speed",
        "label": args.label,
        "shape": [args.size, args.size],
        "params": params,
        "threads": args.threads,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "mid_features": result.mid_features,
        "binary_bits": result.layer_config().get("binary_bits"),
        "rel_output_error": round(rel_output_error(w, w_hat, x), 5),
        "seconds": round(seconds, 2),
        "ref_seconds": round(ref, 5),
        "ref_units": round(seconds / ref, 1),
        "command": f"python benchmarks/dbf_layer_speed.py --size {args.size} --device {args.device} "
        + " ".join(f"--set {s}" for s in args.set),
    }
    emit(record, args.out)


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work: without it the clock stops before the solve ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
