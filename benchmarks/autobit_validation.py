"""Does AutoBit's planning score rank (layer, candidate) pairs as the measured ppl does?

stories260K, the protocol of ../shared/benchmarks.md (128 × 256 wikitext2-valid calibration
tokens, seed 0). AutoBit plans through the Runner (in process) with candidates GPTQ at
its defaults, ``--bits`` × ``--groups`` (default 2/3/4/8 bit g32; ``--bits default``:
AutoBit's default candidates), budget 3.59375 effective bits (uniform 3-bit g32); the
ILP's columns also hold each candidate's per-row twin where 32 does not divide;
every weight it scored is kept (``AutoBitQuantizer.scored_weights``). Then, on the
original model, each (layer, column) weight is put in alone and the TinyStories NLL is
measured ("ts", evaluation text: used here only to judge the score, never by AutoBit).

Records (JSON lines, field "kind"):

* ``pair``: layer, column label, bits, predicted (the plan's err[l, c]), measured
  ΔNLL (nats per token; ts ppl ratio = exp(ΔNLL));
* ``summary``: Spearman and Kendall (tau-b) rank correlation over all pairs and over
  the ILP's trades (per layer, the step from each column to the next cheaper one: the
  predicted vs measured loss saved per bit), the median measured/predicted ratio per
  module type and per block, the plan's ts and its sum-of-parts prediction.

    python benchmarks/autobit_validation.py --label g32-2348 --out benchmarks/results/autobit_validation.jsonl
    python benchmarks/autobit_validation.py --bits default --label defaults --out ...
    python benchmarks/autobit_validation.py --bits 2,3,4,5,8 --groups 32,-1 --label rich --out ...

``--pairs`` also writes every pair's record. Measuring takes one ts evaluation per pair
(160 pairs for 2/3/4/8 g32).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CALIBRATION, STORIES, TS_TEXT, emit  # noqa: E402

#: the effective bits of uniform 3-bit GPTQ g32 on stories260K (3 + 19/32, every layer)
BUDGET = 3.59375


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean rank)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: list[float], y: list[float]) -> float:
    return pearson(ranks(x), ranks(y))


def kendall(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list counted as in the textbook formula)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n0 = concordant + discordant
    denominator = math.sqrt((n0 + ties_x) * (n0 + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def module_type(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def block_of(name: str) -> int:
    parts = name.split(".")
    return next(int(p) for p in parts if p.isdigit())


def plan_with_weights(extra: dict, bits: list[int] | None, groups: list[int]):
    """Run AutoBit through the Runner (``bits`` None: its default candidates); returns
    (runner, quantizer, settings)."""
    from onecomp_core import Runner
    from onecomp_core.contract import Method
    from onecomp_core.data.calibration import CalibrationConfig
    from onecomp_core.data.model import ModelConfig

    settings: dict = {}
    if bits is not None:
        settings["quantizers"] = [
            {"method": "gptq", "wbits": b, "groupsize": g} for g in groups for b in bits
        ]
    settings |= {
        "target_bit": BUDGET,
        "target_bit_is_effective": True,
    } | extra
    quantizer = Method.create("autobit", **settings)
    quantizer.scored_weights = {}
    runner = Runner(
        model_config=ModelConfig(path=str(STORIES), dtype="float32", device="cpu"),
        quantizer=quantizer,
        calibration_config=CalibrationConfig(
            dataset=str(CALIBRATION),
            max_length=256,
            num_calibration_samples=128,
            seed=0,
            strategy="concat_chunk",
        ),
        show_progress=False,
    )
    runner.run()
    return runner, quantizer, settings


_WINDOWS: list = []


def ts_nll(model, tokenizer) -> float:
    """Mean next-token NLL on the TinyStories text: the ``onecomp eval`` protocol (BOS
    first, non-overlapping 512-token windows), the full windows in one batch."""
    if not _WINDOWS:
        ids = tokenizer(TS_TEXT.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
        full = ids.numel() // 512 * 512
        _WINDOWS.extend([ids[:full].view(-1, 512), ids[full:][None]])
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in _WINDOWS:
            if batch.shape[1] < 2:
                continue
            logits = model(batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += batch[:, 1:].numel()
    return total / count


def column_labels(quantizer) -> list[str]:
    from onecomp_autobit.candidates import labels

    names = labels(quantizer.plan.candidates)
    return [names[i] + ("/row" if twin else "") for i, twin in quantizer.plan.columns]


def trades(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Per layer, consecutive columns by bits: (predicted, measured) loss saved per bit."""
    predicted, measured = [], []
    by_layer: dict[str, list[dict]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    for layer_rows in by_layer.values():
        ordered = sorted(layer_rows, key=lambda r: r["bits"])
        for low, high in zip(ordered, ordered[1:], strict=False):
            step = high["bits"] - low["bits"]
            if step <= 1e-9:
                continue
            predicted.append((low["predicted"] - high["predicted"]) / step)
            measured.append((low["measured"] - high["measured"]) / step)
    return predicted, measured


def layer_spearman(rows: list[dict]) -> dict[str, float]:
    """Per column below 5 bits: Spearman across layers (which layer is sensitive)."""
    out = {}
    for column in sorted({r["column"] for r in rows}):
        picked = [r for r in rows if r["column"] == column and r["bits"] < 5]
        if len(picked) > 2:
            predicted = [r["predicted"] for r in picked]
            out[column] = round(spearman(predicted, [r["measured"] for r in picked]), 4)
    return out


def median_ratio(rows: list[dict], key) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for row in rows:
        if row["predicted"] > 0 and row["measured"] > 0:
            groups.setdefault(str(key(row)), []).append(row["measured"] / row["predicted"])
    return {k: round(statistics.median(v), 4) for k, v in sorted(groups.items())}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--bits", default="2,3,4,8", help='candidate GPTQ bit widths; "default": AutoBit\'s own'
    )
    parser.add_argument("--groups", default="32", help="their group sizes (-1: per row)")
    parser.add_argument("--set", action="append", default=[], help="AutoBit option k=v")
    parser.add_argument("--label", default="", help="names this run in the records")
    parser.add_argument("--pairs", action="store_true", help="also write one record per pair")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    bits = None if args.bits == "default" else [int(b) for b in args.bits.split(",")]

    start = time.perf_counter()
    groups = [int(g) for g in args.groups.split(",")]
    runner, quantizer, settings = plan_with_weights(extra, bits, groups)
    plan_seconds = time.perf_counter() - start
    from onecomp_core.data.model import ModelConfig

    model = ModelConfig(path=str(STORIES), dtype="float32", device="cpu").load_model()
    tokenizer = runner.tokenizer
    modules = dict(model.named_modules())
    base = ts_nll(model, tokenizer)
    names = list(quantizer.plan.shapes)
    labels = column_labels(quantizer)
    costs = quantizer.plan.costs
    rows: list[dict] = []
    start = time.perf_counter()
    for i, name in enumerate(names):
        weight = modules[name].weight
        original = weight.data.clone()
        seen: dict[int, float] = {}
        for k, label in enumerate(labels):
            method = quantizer.plan.variant(
                *quantizer.plan.columns[k][:1], name, quantizer.plan.columns[k][1]
            )
            if id(method) in seen:  # the per-row column on a layer the group size divides
                continue
            weight.data.copy_(quantizer.scored_weights[(name, k)])
            seen[id(method)] = ts_nll(model, tokenizer) - base
            weight.data.copy_(original)
            rows.append(
                {
                    "layer": name,
                    "column": label,
                    "bits": round(costs.bits[i][k], 5),
                    "predicted": costs.errors[i][k],
                    "measured": seen[id(method)],
                }
            )
    measure_seconds = time.perf_counter() - start
    label = args.label or "default"
    if args.pairs:
        for row in rows:
            emit({"bench": "autobit_validation", "kind": "pair", "label": label, **row}, args.out)
    predicted = [r["predicted"] for r in rows]
    measured = [r["measured"] for r in rows]
    trade_p, trade_m = trades(rows)
    plan_nll = ts_nll(runner.model, tokenizer)
    chosen = [
        next(
            r
            for r in rows
            if r["layer"] == n and r["column"] == labels[quantizer.plan.column_for(n)]
        )
        if any(
            r["layer"] == n and r["column"] == labels[quantizer.plan.column_for(n)] for r in rows
        )
        else None
        for n in names
    ]
    summary = {
        "bench": "autobit_validation",
        "kind": "summary",
        "label": label,
        "settings": {k: v for k, v in settings.items() if k != "quantizers"},
        "candidates": column_labels(quantizer)[: len(quantizer.plan.candidates)],
        "pairs": len(rows),
        "spearman": round(spearman(predicted, measured), 4),
        "kendall": round(kendall(predicted, measured), 4),
        "trades": len(trade_p),
        "trade_spearman": round(spearman(trade_p, trade_m), 4),
        "trade_kendall": round(kendall(trade_p, trade_m), 4),
        "layer_spearman": layer_spearman(rows),
        "ratio_by_type": median_ratio(rows, lambda r: module_type(r["layer"])),
        "ratio_by_block": median_ratio(rows, lambda r: block_of(r["layer"])),
        "plan_bits": round(quantizer.plan.achieved_bits, 6),
        "plan_ts_in_process": round(math.exp(plan_nll), 4),
        "plan_ts_sum_of_parts": round(
            math.exp(base + sum(r["measured"] for r in chosen if r is not None)), 4
        ),
        "fp_ts": round(math.exp(base), 4),
        "plan_seconds": round(plan_seconds, 2),
        "measure_seconds": round(measure_seconds, 2),
    }
    emit(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
