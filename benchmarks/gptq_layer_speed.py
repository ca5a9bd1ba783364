"""GPTQ on the synthetic 4096×4096 layer of benchmarks.md: time (also in ref units) and error.

Prints one JSON line per configuration; ``--out`` appends them.
``textbook`` is a straightforward GPTQ written here (fp32 scales, every
column updates the rest of its block at once, group grids fitted at the
group's first column): the same-layer baseline for the bars, because the
error depends strongly on the random draw of the layer (``--seed``).

    python benchmarks/gptq_layer_speed.py --threads 2 --out benchmarks/results/gptq_speed.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, ref_unit, rel_output_error, synthetic_layer  # noqa: E402

from onecomp_gptq import GPTQ  # noqa: E402
from onecomp_gptq.gptq import dequantize, gptq_quantize, rtn_quantize  # noqa: E402

#: the plain GPTQ of the paper (GPTQ's defaults before issue 16), spelled out
PLAIN = {"sym": True, "actorder": False, "mse": False}
#: name → GPTQ quantizer settings; "plain" and "actorder+mse" are the bars of issue 4
CONFIGS: dict[str, dict] = {
    "plain": PLAIN,
    "plain asym": PLAIN | {"sym": False},
    "actorder+mse": PLAIN | {"actorder": True, "mse": True},
    "actorder+mse proxy only": PLAIN | {"actorder": True, "mse": True, "clip_candidates": 0},
    "defaults": {},
    "textbook": PLAIN,
}


def textbook_gptq(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: int,
    gs: int,
    sym: bool = True,
    percdamp: float = 0.01,
    block: int = 128,
) -> torch.Tensor:
    """Plain GPTQ as in the paper, min-max grids in fp32: the dequantized weight."""
    w, h = w.clone(), h.clone()
    n, maxq = w.shape[1], 2**bits - 1
    h.diagonal().add_(percdamp * h.diagonal().mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        w1, err = w[:, b0:b1].clone(), torch.zeros(w.shape[0], b1 - b0)
        for i in range(b1 - b0):
            if (b0 + i) % gs == 0:
                part = torch.cat([w1[:, i:], w[:, b1:]], 1)[:, :gs]
                lo, hi = part.min(1).values.clamp(max=0), part.max(1).values.clamp(min=0)
                if sym:
                    hi = torch.maximum(hi, -lo)
                    lo = -hi
                scale = (hi - lo).clamp(min=1e-12) / maxq
                zero = torch.full_like(scale, (maxq + 1) // 2) if sym else torch.round(-lo / scale)
            codes = torch.clamp(torch.round(w1[:, i] / scale) + zero, 0, maxq)
            q[:, b0 + i] = scale * (codes - zero)
            err[:, i] = (w1[:, i] - q[:, b0 + i]) / u[b0 + i, b0 + i]
            w1[:, i:] -= err[:, i : i + 1] * u[b0 + i, b0 + i : b1]
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--groupsize", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, x = synthetic_layer(args.size, args.tokens, seed=args.seed)
    h = 2 * x.t() @ x / x.shape[0]
    for name in args.configs:
        settings = CONFIGS[name]
        quantizer = GPTQ(wbits=args.bits, groupsize=args.groupsize, **settings)
        spec = quantizer.grid_spec(args.bits)
        unit = ref_unit()
        start = time.perf_counter()
        if name == "textbook":
            w_hat = textbook_gptq(w, h, args.bits, args.groupsize)
        else:
            out = gptq_quantize(
                w,
                h,
                spec,
                groupsize=args.groupsize,
                actorder=quantizer.actorder,
                percdamp=quantizer.percdamp,
                blocksize=quantizer.blocksize,
                row_shrinks=quantizer.row_shrinks(),
            )
            w_hat = dequantize(out)
        seconds = time.perf_counter() - start
        unit = (unit + ref_unit()) / 2
        rtn = dequantize(rtn_quantize(w, torch.diagonal(h), spec, args.groupsize))
        emit(
            {
                "benchmark": "gptq_speed",
                "config": name,
                "settings": settings,
                "clip_candidates": quantizer.clip_candidates if quantizer.mse else 0,
                "size": args.size,
                "seed": args.seed,
                "bits": args.bits,
                "groupsize": args.groupsize,
                "threads": args.threads,
                "load_avg_1m": round(os.getloadavg()[0], 1),
                "seconds": round(seconds, 3),
                "ref_unit_s": round(unit, 5),
                "ref_units": round(seconds / unit, 1),
                "rel_output_error": round(rel_output_error(w, w_hat, x), 6),
                "rtn_rel_output_error": round(rel_output_error(w, rtn, x), 6),
            },
            args.out,
        )


if __name__ == "__main__":
    main()
