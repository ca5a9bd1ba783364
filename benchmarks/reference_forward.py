"""Seconds of one calibration forward through a model's blocks, in a process of its own.

Item 3 of issue 12 compares a quantize run's wall time with one calibration
forward plus the sum of the layer solves. An engine that times its own first
forward reports it in the summary's ``timings``; for one that does not (the
whole-model engine), this measures the same forward apart: the protocol's
calibration windows (built by onecomp's own calibration code, same seed and
strategy), fed through the decoder (embeddings and blocks, no head) in
batches of the CLI's default size, without gradients, on this process's
threads. Prints one JSON line: ``{"forward_s": …, "load_s": …}``.

    python benchmarks/reference_forward.py MODEL --num-samples 32 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CALIBRATION  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onecomp_core.data.calibration import CalibrationConfig, batches, build_calibration

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = CalibrationConfig(
        dataset=str(CALIBRATION),
        max_length=args.max_length,
        num_calibration_samples=args.num_samples,
        seed=0,
        batch_size=args.batch_size,
    )
    data = build_calibration(config, tokenizer)
    load = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for input_ids, mask in batches(data, args.batch_size):
            model.model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    forward = time.perf_counter() - start
    print(json.dumps({"forward_s": round(forward, 2), "load_s": round(load, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
