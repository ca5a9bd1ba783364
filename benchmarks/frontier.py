"""The accuracy frontier on stories260K (protocol of benchmarks.md), through the real `onecomp` CLI.

One run per invocation: ``--method NAME`` with ``--set KEY=VALUE`` settings
(and any extra quantize arguments after ``--``) goes through ``onecomp
quantize`` and ``onecomp eval`` (ts: all TinyStories tokens, wt: the first
20,480 WikiText-2 test tokens). The perplexities are those of the saved
folder loaded in a fresh process (the packed model, not the run's copy).
``--dense-check`` also reports ``ts_dense``: the loaded model with every
packed layer replaced by an nn.Linear holding its dequantized weight (what
the run computed with), so ts = ts_dense shows the codes are the model.
Prints one JSON line; ``--out`` appends it.

    python benchmarks/frontier.py --method jointq --set bits=4 --set group_size=-1 \
        --out benchmarks/results/frontier.jsonl
    python benchmarks/frontier.py --method quip --set wbits=3 --label "quip w3 defaults"
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TS_TEXT, emit, perplexities, quantize  # noqa: E402


def dense_ts(folder: Path) -> float:
    """ts of the saved model with each packed layer swapped for nn.Linear(its dequantized weight)."""
    import torch

    from onecomp_core import calculate_perplexity, load_quantized_model
    from onecomp_core.kernels import PackedIntLinear

    model, tokenizer = load_quantized_model(folder)
    for name, layer in list(model.named_modules()):
        if isinstance(layer, PackedIntLinear):
            dense = torch.nn.Linear(
                layer.in_features, layer.out_features, bias=layer.bias is not None
            )
            dense.weight.data = layer.dequantize().float()
            if layer.bias is not None:
                dense.bias.data = layer.bias.float()
            model.set_submodule(name, dense)
    return calculate_perplexity(model.float(), tokenizer, TS_TEXT).ppl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--method", required=True)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for the method")
    ap.add_argument("--label", default=None, help="the row's name (default: method + settings)")
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    ap.add_argument("--dense-check", action="store_true", help="also ts of the dense weights")
    ap.add_argument("extra", nargs="*", help="more `onecomp quantize` arguments (after --)")
    args = ap.parse_args()
    label = args.label or " ".join([args.method, *args.set, *args.extra])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        record = {"benchmark": "frontier", "config": label, "method": args.method}
        record["command"] = " ".join(
            ["python benchmarks/frontier.py --method", args.method]
            + [f"--set {s}" for s in args.set]
            + (["--", *args.extra] if args.extra else [])
        )
        record |= {"settings": args.set + args.extra}
        record |= quantize(folder, args.method, args.set, extra=args.extra)
        record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
        if args.dense_check:
            record["ts_dense"] = round(dense_ts(folder), 4)
        emit(record, args.out)


if __name__ == "__main__":
    main()
