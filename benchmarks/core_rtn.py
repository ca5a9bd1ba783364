"""RTN through the real CLI on stories260K: quality, time, peak memory, size, inference speed.

Run from the repository root:
``python benchmarks/core_rtn.py --out benchmarks/results/core_rtn.jsonl``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import STORIES, emit, perplexities, quantize  # noqa: E402

CONFIGS = {
    "rtn w8": ["wbits=8"],
    "rtn w4 sym": ["wbits=4"],
    "rtn w4 asym": ["wbits=4", "sym=false"],
    "rtn w3 asym": ["wbits=3", "sym=false"],
    "rtn w4 g32 asym": ["wbits=4", "groupsize=32", "sym=false"],
}


def generation_seconds(model, tokenizer, tokens: int = 64) -> float:
    """Greedy generation from one prompt: the median of three timings."""
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=tokens, do_sample=False, min_new_tokens=tokens)
            times.append(time.perf_counter() - start)
    return sorted(times)[1]


def inference_ratio(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onecomp_core import load_quantized_model

    original = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(STORIES)
    quantized, _ = load_quantized_model(folder, dtype="float32")
    for module in quantized.modules():
        if hasattr(module, "cache_weight"):
            module.cache_weight = True
    base = generation_seconds(original, tokenizer)
    packed = generation_seconds(quantized, tokenizer)
    return {"gen64_original_s": round(base, 4), "gen64_quantized_s": round(packed, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            folder = Path(tmp) / name.replace(" ", "_")
            record = {"benchmark": "core_rtn", "config": name, "settings": CONFIGS[name]}
            record |= quantize(folder, "rtn", CONFIGS[name], calibrate=False)
            record |= {k: round(v, 4) for k, v in perplexities(folder).items()}
            record |= inference_ratio(folder)
            emit(record, args.out)


if __name__ == "__main__":
    main()
