"""Peak memory of one GPTQ solve with the plugin's defaults, above its inputs, and its codes' hash.

A seeded (out × in) weight and H = XᵀX/N (one dead input) are built, then
``gptq_quantize`` runs alone in this process, H handed over as the engine hands it: the peak resident memory it
adds over W and H (``VmHWM`` reset just before) is what the solve itself
holds; the hash of codes, scales, zeros and g_idx shows whether a change
kept the numbers. Default shape: TinyLlama's ``down_proj`` (2048 × 5632).

    python benchmarks/gptq_solve_memory.py --out benchmarks/results/gptq_solve_memory.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, peak_rss_above, reset_peak_rss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=5632)
    parser.add_argument("--out-features", type=int, default=2048)
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default="", help="jsonl to append to ('' = print only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from onecomp_core.engine.heap import return_freed_memory
    from onecomp_core.kernels.gptq_solve import gptq_quantize
    from onecomp_gptq.config import GPTQConfig

    return_freed_memory()
    n, out = args.in_features, args.out_features
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, n, generator=g)
    h = (x.t() @ x) / x.shape[0]
    del x
    h[3, :], h[:, 3] = 0.0, 0.0  # a dead input
    w = torch.randn(out, n, generator=g)
    cfg = GPTQConfig(wbits=4, groupsize=128)
    start = reset_peak_rss()
    t0 = time.perf_counter()
    box, h = [h], None  # handed over, as the engine does (LayerJob.take_hessian)
    res = gptq_quantize(
        w,
        box,
        cfg.grid_spec(4),
        groupsize=128,
        actorder=cfg.actorder,
        row_shrinks=cfg.row_shrinks(),
    )
    seconds = time.perf_counter() - t0
    parts = (res.codes, res.scales, res.zeros, res.g_idx)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in parts)).hexdigest()[:16]
    emit(
        {
            "benchmark": "gptq_solve_memory",
            "label": args.label,
            "shape": [out, n],
            "settings": "GPTQ defaults, wbits=4, groupsize=128",
            "peak_above_inputs_mb": round(peak_rss_above(start) / 2**20),
            "hessian_mb": round(n * n * 4 / 2**20),
            "seconds": round(seconds, 1),
            "threads": 1,
            "codes_sha256_16": digest,
            "command": "python benchmarks/gptq_solve_memory.py",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
