"""Peak memory of one DBF layer solve (full-H path), above its inputs, and its results' hash.

A seeded (out × in) weight and H = (2/N)·XᵀX (one dead input) are built,
then the DBF method's ``quantize`` runs alone in this process on a
``LayerJob`` that hands H over, as the engine does: the peak resident
memory it adds over W and H (``VmHWM`` reset just before) is what the solve
itself holds. The hash of the five result tensors shows whether a change
kept the numbers; the relative output error tr(ΔW·H·ΔWᵀ)/tr(W·H·Wᵀ) is
reported too. Default shape: TinyLlama's ``down_proj`` (2048 × 5632),
``target_bits=1.5``; ``--iters`` (ADMM iterations, default 2; the
method's default of 40 takes many minutes) does not change the peak (the
ADMM's state is the same every iteration; check with ``--iters 1`` vs 3).
``--eigh torch|evd|evr`` (rows in ``dbf_eigh_memory.jsonl``) measures only
the eigendecomposition of the input correlation (the H above):
``torch.linalg.eigh`` against SciPy's LAPACK in C's memory (``syevd``,
``syevr``; the plugin's ``_eigh_`` picks one by size), peak above C,
seconds, the largest residual ‖C·v − λ·v‖ of the top five pairs and the
largest deviation of the top 50 eigenvectors from orthonormal. The rows
labelled ``inplace`` are ``evd``.

    python benchmarks/dbf_solve_memory.py --label LABEL --out benchmarks/results/dbf_solve_memory.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, peak_rss_above, reset_peak_rss  # noqa: E402


def _inputs(out: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded weight and H = (2/N)·XᵀX with a dead input (rebuilt bit-identically)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, n, generator=g)
    x *= torch.rand(n, generator=g) + 0.25  # unequal input scales, as activations have
    h = (x.t() @ x) * (2.0 / x.shape[0])
    del x
    h[3, :], h[:, 3] = 0.0, 0.0  # a dead input
    w = torch.randn(out, n, generator=g)
    return w, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=5632)
    parser.add_argument("--out-features", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=2, help="ADMM iterations (default 2)")
    parser.add_argument("--eigh", choices=["torch", "evd", "evr"], help="only C's eigh (see above)")
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default="", help="jsonl to append to ('' = print only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from onecomp_core.contract import LayerJob
    from onecomp_core.engine.heap import return_freed_memory
    from onecomp_core.registry import create_method

    n, out = args.in_features, args.out_features
    if args.eigh:
        return _eigh_only(args, n, return_freed_memory)
    w, h = _inputs(out, n)
    module = nn.Linear(n, out, bias=False)
    module.weight.data = w
    method = create_method("dbf", target_bits=1.5, iters=args.iters)
    job = LayerJob(name="model.layers.0.mlp.down_proj", module=module, hessian=h, hands_over=True)
    h = None  # the job holds the only reference, as in the engine
    return_freed_memory()
    start = reset_peak_rss()
    t0 = time.perf_counter()
    res = method.quantize(job)
    seconds = time.perf_counter() - t0
    peak = peak_rss_above(start)
    assert res.is_dbf_quantized, res.fallback
    parts = (res.dbf_Da, res.dbf_A, res.dbf_mid, res.dbf_B, res.dbf_Db)
    digest = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in parts)).hexdigest()
    del job
    w, h = _inputs(out, n)
    dw = w - res.dequantize().float()
    rel = float(((dw @ h) * dw).sum() / ((w @ h) * w).sum())
    emit(
        {
            "benchmark": "dbf_solve_memory",
            "label": args.label,
            "shape": [out, n],
            "settings": f"DBF defaults, target_bits=1.5, iters={args.iters}, H handed over",
            "peak_above_inputs_mb": round(peak / 2**20),
            "hessian_mb": round(n * n * 4 / 2**20),
            "relative_output_error": float(f"{rel:.6g}"),
            "seconds": round(seconds, 1),
            "threads": 1,
            "results_sha256_16": digest[:16],
            "command": f"python benchmarks/dbf_solve_memory.py --iters {args.iters}",
        },
        args.out,
    )


def _eigh_only(args: argparse.Namespace, n: int, return_freed_memory) -> None:
    from scipy.linalg import eigh

    _, c = _inputs(1, n)
    c.diagonal().add_(0.1 * c.diagonal().mean())  # damped, as the fit's C is
    check = c.clone()
    return_freed_memory()
    start = reset_peak_rss()
    t0 = time.perf_counter()
    if args.eigh == "torch":
        e, v = torch.linalg.eigh(c)
    else:  # as the plugin's _eigh_ calls it (C's row-major memory is C column-major)
        kw = {"lower": True, "overwrite_a": True, "check_finite": False, "driver": args.eigh}
        e, v = (torch.from_numpy(a) for a in eigh(c.numpy().T, **kw))
        del c
    seconds = time.perf_counter() - t0
    peak = peak_rss_above(start)
    top = v[:, -5:]
    residual = float((check @ top - top * e[-5:]).abs().max())
    top = v[:, -50:]
    orthogonality = float((top.t() @ top - torch.eye(top.shape[1])).abs().max())
    emit(
        {
            "benchmark": "dbf_eigh_memory",
            "label": args.label,
            "shape": [n, n],
            "eigh": args.eigh,
            "peak_above_c_mb": round(peak / 2**20),
            "c_mb": round(n * n * 4 / 2**20),
            "seconds": round(seconds, 1),
            "threads": 1,
            "max_residual_top5": float(f"{residual:.3g}"),
            "max_orthogonality_top50": float(f"{orthogonality:.3g}"),
            "command": f"python benchmarks/dbf_solve_memory.py --eigh {args.eigh}",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
