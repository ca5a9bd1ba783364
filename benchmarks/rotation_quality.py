"""Rotation (``--rotate hadamard`` / ``learned``) against none, per method, on stories260K.

Each row runs ``onecomp quantize`` (protocol calibration, lm_head kept, the
method's defaults plus the row's settings) with and without ``--rotate KIND``
and ``onecomp eval`` on the saved folder (ts, wt). Records (each with its
command) went to ``benchmarks/results/frontier.jsonl`` for ``hadamard``
(issue 16's frontier table) and go to ``benchmarks/results/rotation.jsonl``
for ``learned``.

    python benchmarks/rotation_quality.py --out benchmarks/results/frontier.jsonl
    python benchmarks/rotation_quality.py --rows "gptq w3" --seeds 0 1 2
    python benchmarks/rotation_quality.py --rotate learned --no-baseline \
        --out benchmarks/results/rotation.jsonl
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


def cost(blocks: int) -> dict:
    """Seconds (and ref units) per training step of ``--rotate learned`` and peak resident memory,
    on a random model of TinyLlama's layer shapes with ``blocks`` blocks (4 windows of 256 tokens
    per step, one thread): the step minus the first (the teacher's forward and set-up)."""
    import resource
    import time

    import torch
    from common import ref_unit
    from synthetic_model import TINYLLAMA, llama_config
    from transformers import AutoModelForCausalLM

    from onecomp_core.transforms.learned import learn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(llama_config(blocks, TINYLLAMA)).eval()
    windows = torch.randint(0, 32000, (4, 256))
    seconds = []
    for steps in (1, 2):
        start = time.perf_counter()
        learn(model, windows, bits=3, steps=steps)
        seconds.append(time.perf_counter() - start)
    step = seconds[1] - seconds[0]
    return {
        "benchmark": "rotation_learned_cost",
        "shape": "TinyLlama",
        "blocks": blocks,
        "step_s": round(step, 2),
        "step_ref_units": round(step / ref_unit(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "command": f"python benchmarks/rotation_quality.py --cost {blocks} "
        "--out benchmarks/results/rotation.jsonl",
    }


def _command(args: argparse.Namespace) -> str:
    if args.rotate == "hadamard":
        return COMMAND
    rows = " ".join(f'"{r}"' for r in args.rows)
    seeds = " ".join(map(str, args.seeds))
    base = " --no-baseline" if args.no_baseline else ""
    return (
        f"python benchmarks/rotation_quality.py --rotate {args.rotate} --rows {rows} "
        f"--seeds {seeds}{base} --out benchmarks/results/rotation.jsonl"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="--rotate-seed values")
    ap.add_argument("--rotate", default="hadamard", choices=["hadamard", "learned"])
    ap.add_argument("--no-baseline", action="store_true", help="only the rotated runs")
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    ap.add_argument("--outliers", action="store_true", help="only the outlier measures")
    ap.add_argument("--cost", type=int, metavar="BLOCKS", help="only the learned step's cost")
    args = ap.parse_args()
    if args.cost:
        emit(cost(args.cost), args.out)
        return
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
                extra = ["--rotate", args.rotate, "--rotate-seed", str(seed)]
                extra = [] if seed is None else extra
                folder = Path(tmp) / f"{row}_{seed}".replace(" ", "_")
                record = {
                    "benchmark": "rotation_quality",
                    "config": row,
                    "rotate": "none" if seed is None else f"{args.rotate} seed {seed}",
                    "settings": settings,
                }
                record |= quantize(folder, method, settings, extra=extra)
                record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
                record["command"] = _command(args)
                emit(record, args.out)


if __name__ == "__main__":
    main()
