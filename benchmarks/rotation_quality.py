"""Rotation (``--rotate hadamard``) against none, per method, on stories260K (issue 16).

Each row runs ``onecomp quantize`` (protocol calibration, lm_head kept, the
method's defaults plus the row's settings) with and without ``--rotate
hadamard`` and ``onecomp eval`` on the saved folder (ts, wt). Records go to
``benchmarks/results/frontier.jsonl`` (the issue's frontier table), each with
its command.

    python benchmarks/rotation_quality.py --out benchmarks/results/frontier.jsonl
    python benchmarks/rotation_quality.py --rows "gptq w3" --seeds 0 1 2
    python benchmarks/rotation_quality.py --outliers   # what there is to spread, before/after

``--outliers`` measures, on the fp32 model before and after the rotation, the
mean over the blocks' linears of each weight row's max/rms, and per linear
input the max/median of its channels' RMS over 1,024 calibration tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, perplexities, quantize  # noqa: E402

#: row → (method, settings on top of the method's defaults)
ROWS: dict[str, tuple[str, list[str]]] = {
    "gptq w4 g32": ("gptq", ["wbits=4", "groupsize=32"]),
    "gptq w3": ("gptq", ["wbits=3"]),
    "gptq w2 g32": ("gptq", ["wbits=2", "groupsize=32"]),
    "rtn w4 asym": ("rtn", ["wbits=4", "sym=false"]),
    "rtn w3 asym": ("rtn", ["wbits=3", "sym=false"]),
}
COMMAND = "python benchmarks/rotation_quality.py --out benchmarks/results/frontier.jsonl"


def outliers(seed: int = 0) -> dict:
    """Outlier measures of stories260K's weights and linear inputs, before and after rotation."""
    import torch
    from common import CALIBRATION, STORIES

    from onecomp_core.data.model import ModelConfig
    from onecomp_core.transforms.rotation import rotate_model

    config = ModelConfig(path=str(STORIES), dtype="float32", device="cpu")
    ids = config.load_tokenizer()(CALIBRATION.read_text()[:20000], return_tensors="pt")
    ids = ids.input_ids[:, :1024]

    def measure(model) -> dict:
        inputs, handles = {}, []
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        linears = {n: m for n, m in linears.items() if ".layers." in n}
        for name, module in linears.items():
            hook = lambda m, a, n=name: inputs.__setitem__(n, a[0].reshape(-1, a[0].shape[-1]))  # noqa: E731
            handles.append(module.register_forward_pre_hook(hook))
        with torch.no_grad():
            model(ids)
        for handle in handles:
            handle.remove()
        rows = [
            (w.abs().amax(1) / w.pow(2).mean(1).sqrt()).mean()
            for w in (m.weight for m in linears.values())
        ]
        channels = [x.pow(2).mean(0).sqrt() for x in inputs.values()]
        ratios = [float(c.max() / c.median()) for c in channels]
        return {
            "weight_row_max_over_rms": round(float(sum(rows) / len(rows)), 3),
            "input_channel_max_over_median": [round(min(ratios), 2), round(max(ratios), 2)],
        }

    model = config.load_model()
    before = measure(model)
    rotate_model(model, seed)
    return {"benchmark": "rotation_outliers", "before": before, "after": measure(model)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="--rotate-seed values")
    ap.add_argument("--no-baseline", action="store_true", help="only the rotated runs")
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    ap.add_argument("--outliers", action="store_true", help="only the outlier measures")
    args = ap.parse_args()
    if args.outliers:
        emit(outliers(args.seeds[0]) | {"command": COMMAND + " --outliers"}, args.out)
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = [None] if not args.no_baseline else []
    runs += list(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            method, settings = ROWS[row]
            for seed in runs:
                extra = [] if seed is None else ["--rotate", "hadamard", "--rotate-seed", str(seed)]
                folder = Path(tmp) / f"{row}_{seed}".replace(" ", "_")
                record = {
                    "benchmark": "rotation_quality",
                    "config": row,
                    "rotate": "none" if seed is None else f"hadamard seed {seed}",
                    "settings": settings,
                }
                record |= quantize(folder, method, settings, extra=extra)
                record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
                record["command"] = COMMAND
                emit(record, args.out)


if __name__ == "__main__":
    main()
