"""DBF on the synthetic 1024×1024 layer of benchmarks.md: relative output error and time.

The layer, its inputs and the yardstick ("ref units": the median 1024×1024
fp32 product on the same threads) come from ``common``. One JSON line per
configuration.

    python benchmarks/dbf_layer_speed.py                       # DBF defaults, 1.5 bits
    python benchmarks/dbf_layer_speed.py --set iters=600 --set use_balancing=true
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
    layer = nn.Linear(args.size, args.size, bias=False)
    layer.weight.data.copy_(w)
    ref_before = ref_unit()
    start = time.perf_counter()
    result = quantizer.quantize(LayerJob("synthetic", layer, hessian=statistic))
    seconds = time.perf_counter() - start
    ref = (ref_before + ref_unit()) / 2
    record = {
        "benchmark": "dbf_layer_speed",
        "label": args.label,
        "shape": [args.size, args.size],
        "params": params,
        "threads": args.threads,
        "mid_features": result.mid_features,
        "binary_bits": result.layer_config().get("binary_bits"),
        "rel_output_error": round(rel_output_error(w, result.compute_dequantized_weight(), x), 5),
        "seconds": round(seconds, 2),
        "ref_seconds": round(ref, 5),
        "ref_units": round(seconds / ref, 1),
        "command": "python benchmarks/dbf_layer_speed.py "
        + " ".join(f"--set {s}" for s in args.set),
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
