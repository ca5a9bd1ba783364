"""Size of a quantized output folder against the fp16 checkpoint of the same model (issue 14).

Builds (once, cached) the synthetic Llama of ``synthetic_model.py`` with hidden
1024, intermediate 2816, 16 heads, vocab 4096 and ``--blocks`` blocks, saved in
fp32, runs ``onecomp quantize`` on it (GPTQ 4-bit, group size 128 by default;
a tiny calibration set, since sizes do not depend on it) and records:

- ``folder_bytes``: every file of the output folder (weights, config, tokenizer);
- ``fp16_bytes``: the fp16 checkpoint's weights (the fp32 weights' bytes / 2);
- ``ratio``: folder_bytes / fp16_bytes, and what ``onecomp inspect`` reports.

Usage: ``python benchmarks/checkpoint_size.py --out benchmarks/results/checkpoint_size.jsonl``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import synthetic_model  # noqa: E402

ASSETS = HERE.parents[1] / "shared" / "assets"
SIZES = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=4096,
    tie_word_embeddings=False,
)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--models", default="/tmp/onecomp-size", help="model cache folder")
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--save-dtype", default=None)
    parser.add_argument("--out", default=None, help="append the record to this jsonl file")
    args = parser.parse_args()
    settings = args.set or ["wbits=4", "groupsize=128"]
    models = Path(args.models)
    folder = models / f"size-{args.blocks}b"
    done = folder / "config.json"
    if not done.is_file():
        synthetic_model.build(folder, args.blocks, SIZES, tokenizer=ASSETS / "stories260K")
    fp16_bytes = synthetic_model.weight_bytes(folder) // 2
    with tempfile.TemporaryDirectory(dir=models) as tmp:
        out = Path(tmp) / "q"
        command = [
            "onecomp", "quantize", str(folder), "--method", args.method,
            *(x for s in settings for x in ("--set", s)),
            "--calibration", str(ASSETS / "text" / "wikitext2-valid.tokens.txt"),
            "--num-samples", "4", "--max-length", "64", "--no-checkpoint",
            "--out", str(out), "--quiet",
        ]  # fmt: skip
        if args.save_dtype:
            command += ["--save-dtype", args.save_dtype]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - start
        size = folder_bytes(out)
        report = json.loads(
            subprocess.run(
                ["onecomp", "inspect", str(out), "--json"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        dtype = json.loads((out / "config.json").read_text()).get("dtype")
    record = {
        "model": f"synthetic llama h1024 i2816 16 heads vocab 4096, {args.blocks} blocks, fp32",
        "method": f"{args.method} {' '.join(settings)}",
        "saved dtype": dtype,
        "folder_bytes": size,
        "fp16_bytes": fp16_bytes,
        "ratio": round(size / fp16_bytes, 4),
        "inspect size_vs_fp16": report["size_vs_fp16"],
        "quantize_s": round(seconds, 1),
    }
    print(json.dumps(record))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
