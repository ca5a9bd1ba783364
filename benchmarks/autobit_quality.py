"""AutoBit vs uniform GPTQ on stories260K at equal effective bits (protocol of benchmarks.md).

Everything goes through the real CLI (``onecomp quantize``, ``inspect`` and ``eval`` via
:mod:`benchmarks.common`): 128 × 256 wikitext2-valid calibration tokens, seed 0, lm_head
kept, ts (TinyStories) and wt (WikiText-2 test, first 20,480 tokens) perplexity of the
saved-and-reloaded model. One JSON line per configuration (field "config" names it).

Configurations (the same GPTQ options, defaults + group size 32, for every GPTQ run):

* ``uniform-3b`` / ``uniform-2b``: ``onecomp quantize --method gptq --set wbits=B
  --set groupsize=32`` (GPTQ's own shorter last group on the 172-wide down_proj);
* ``autobit-3b`` / ``autobit-2b``: candidates GPTQ 2/3/4/8 bit g32 (where 32 does not
  divide the layer's width, the ILP may also pick each candidate's per-row twin), budget = the uniform run's
  parameter-weighted effective bits from its saved per-layer table,
  ``target_bit_is_effective=True``;
* ``defaults-3b`` / ``defaults-2b``: AutoBit's default candidates (GPTQ at its defaults,
  from floor(budget) to floor(budget) + 2 bits, each at group size 32 and per row), same
  budget;
* ``fallback-1.5``: ``target_bit=1.5``, i.e. the DBF fallback, saved and loaded back.

    python benchmarks/autobit_quality.py --out benchmarks/results/autobit_quality.jsonl
    python benchmarks/autobit_quality.py --only autobit-3b --set use_curvature_b=false --label a-only
    python benchmarks/autobit_quality.py --only autobit-3b --set target_bit=4.0 --label budget-4.0

``--set target_bit=...`` replaces the uniform run's budget (the record then has no
``ts_change_vs_uniform``).

An AutoBit configuration takes its budget from its uniform run in this invocation, else
from the latest record of that run in ``--out`` (it runs the uniform one when neither has it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, perplexities, quantize, ref_unit  # noqa: E402

GROUPSIZE = 32
CANDIDATE_BITS = (2, 3, 4, 8)
#: configuration → (method, settings, the uniform configuration whose bits are the budget)
CONFIGS: dict[str, tuple[str, dict, str | None]] = {
    "uniform-3b": ("gptq", {"wbits": 3, "groupsize": GROUPSIZE}, None),
    "autobit-3b": ("autobit", {}, "uniform-3b"),
    "defaults-3b": ("autobit", {}, "uniform-3b"),
    "uniform-2b": ("gptq", {"wbits": 2, "groupsize": GROUPSIZE}, None),
    "autobit-2b": ("autobit", {}, "uniform-2b"),
    "defaults-2b": ("autobit", {}, "uniform-2b"),
    "fallback-1.5": ("autobit", {"target_bit": 1.5, "dbf_iters": 100}, None),
}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def table_stats(folder: Path) -> dict:
    """Parameter-weighted effective bits of the saved per-layer table, and layers per method."""
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    rows = qc["layers"]
    weights = {n: r["in_features"] * r["out_features"] for n, r in rows.items()}
    bits = sum(r["effective_bits"] * weights[n] for n, r in rows.items()) / sum(weights.values())
    methods: dict[str, int] = {}
    for r in rows.values():
        group = r.get("groupsize")
        key = f"{r['method']}-{r.get('bits', r.get('target_bits'))}" + (
            "" if group is None else f"-g{group}" if group > 0 else "-row"
        )
        methods[key] = methods.get(key, 0) + 1
    return {"effective_bits": round(bits, 6), "layers": len(rows), "layer_methods": methods}


def latest(config: str, done: dict[str, dict], out: str | None) -> dict | None:
    if config in done:
        return done[config]
    if out and Path(out).is_file():
        for line in reversed(Path(out).read_text().splitlines()):
            row = json.loads(line)
            if row.get("config") == config:
                return row
    return None


def run(name: str, extra: dict, label: str, done: dict[str, dict], out: str | None) -> dict:
    method, settings, baseline = CONFIGS[name]
    settings = dict(settings)
    record: dict = {"bench": "autobit_quality", "config": name + (f" {label}" if label else "")}
    if baseline is not None:
        uniform = latest(baseline, done, out) or run(baseline, {}, "", done, out)
        if not name.startswith("defaults"):
            settings["quantizers"] = [
                {"method": "gptq", "wbits": b, "groupsize": GROUPSIZE} for b in CANDIDATE_BITS
            ]
        settings |= {
            "target_bit": uniform["effective_bits"],
            "target_bit_is_effective": True,
        }
        record["uniform_ts"] = uniform["ts"]
    settings |= extra
    if baseline is not None and "target_bit" in extra:
        del record["uniform_ts"]  # another budget: the uniform run is no reference
    record["settings"] = settings
    with tempfile.TemporaryDirectory(prefix="autobit_bench_") as tmp:
        folder = Path(tmp) / "model"
        if method == "autobit":
            settings_for_run = settings | {"save_path": str(Path(tmp) / "plan.png")}
        else:
            settings_for_run = settings
        measured = quantize(
            folder, method, [f"{k}={json.dumps(v)}" for k, v in settings_for_run.items()]
        )
        record |= table_stats(folder)
        record |= {k: round(v, 3) for k, v in perplexities(folder).items()}
    if "uniform_ts" in record:
        record["ts_change_vs_uniform"] = round(record["ts"] / record["uniform_ts"] - 1, 4)
    record |= {
        "average_bits_on_disk": measured["average_bits"],
        "bytes": measured["bytes"],
        "fp16_bytes": measured["fp16_bytes"],
        "quantize_seconds": measured["seconds"],
        "quantize_ref_units": round(measured["seconds"] / ref_unit()),
        "peak_rss_mb": measured["peak_rss_mb"],
    }
    emit(record, out)
    if not label and not extra:
        done[name] = record
    return record


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=list(CONFIGS), help="run only these")
    parser.add_argument("--set", action="append", default=[], help="extra AutoBit option k=v")
    parser.add_argument("--label", default="", help="appended to the config name of the records")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args()
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    done: dict[str, dict] = {}
    for name in args.only or list(CONFIGS):
        if name in done:
            continue
        mine = CONFIGS[name][0] == "autobit"
        run(name, extra if mine else {}, args.label if mine else "", done, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
