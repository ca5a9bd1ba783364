"""Do two versions of onecomp write the same quantized tensors? The check behind "no result changed".

``python benchmarks/same_outputs.py --base REV`` checks out REV (a commit, e.g.
the last landed one) into a temporary git worktree, quantizes stories260K with
every config below through the CLI with the old code and with the working
tree, one thread each (multi-threaded CPU reductions may differ in the last
bit from run to run), and compares the sha256 of every saved tensor and every
per-layer row, and prints each side's seconds. Exit 0 when all are identical.
``--protocol`` runs the acceptance settings (``PROTOCOL_CONFIGS``) with the
full calibration of ../shared/benchmarks.md (128 × 256 tokens), not 16 × 128.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
GPTQ_CANDIDATES = json.dumps(
    [{"method": "gptq", "wbits": b, "groupsize": 32} for b in (2, 3, 4, 8)]
)
#: name → onecomp quantize arguments
CONFIGS: dict[str, list[str]] = {
    "rtn4": ["--method", "rtn", "--set", "wbits=4", "--set", "groupsize=32", "--set", "sym=false"],
    "gptq4": ["--method", "gptq", "--set", "wbits=4", "--set", "groupsize=32"]
    + ["--set", "sym=false", "--set", "actorder=true", "--set", "mse=true"],
    "gptq3qep": ["--method", "gptq", "--set", "wbits=3", "--qep"],
    "gptqmixed": ["--method", "gptq", "--set", "wbits=3", "--set", "mlp_wbits=4"]
    + ["--set", 'module_wbits={"model.layers.0.self_attn.q_proj": 8}'],
    "dbf15": ["--method", "dbf", "--set", "target_bits=1.5", "--set", "finetune_steps=5"]
    + ["--set", "distill_steps=5", "--set", "iters=8"],
    "dbf2lw": ["--method", "dbf", "--set", "target_bits=2.0", "--set", "finetune_steps=0"]
    + ["--set", "iters=8"],
    "dbfqep": ["--method", "dbf", "--set", "target_bits=1.5", "--set", "finetune_steps=0"]
    + ["--set", "iters=8", "--qep"],
    "autobit3": ["--method", "autobit", "--set", "target_bit=3.59375"]
    + ["--set", "target_bit_is_effective=true", "--set", f"quantizers={GPTQ_CANDIDATES}"],
    "autobitdbf": ["--method", "autobit", "--set", "target_bit=1.5", "--set", "dbf_iters=8"],
    "example": ["--method", "ternary"],
}
#: with --protocol: the acceptance settings (each method's defaults where the table uses them)
PROTOCOL_CONFIGS: dict[str, list[str]] = {
    "gptq4g32": CONFIGS["gptq4"],
    "gptq3qep": ["--method", "gptq", "--set", "wbits=3", "--set", "sym=false"]
    + ["--set", "actorder=true", "--set", "mse=true", "--qep"],
    "dbf15": ["--method", "dbf", "--set", "target_bits=1.5"],
    "autobit3": CONFIGS["autobit3"],
}


def source_paths(tree: Path) -> list[str]:
    """The import roots of the core and of every plugin in a source tree."""
    roots = [tree]
    roots += [p.parent for p in sorted(tree.glob("plugins/*/onecomp_*/__init__.py"))]
    roots += [p.parent for p in sorted(tree.glob("examples/*/onecomp_*/__init__.py"))]
    return [str(p if p == tree else p.parent) for p in roots]


def quantize(tree: Path, out: Path, args: list[str], calibration: list[str]) -> None:
    """Run ``onecomp quantize`` with ``tree``'s code first on the import path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONECOMP_QUIET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(source_paths(tree))
    command = [sys.executable, "-m", "onecomp_core.cli", "quantize", str(ASSETS / "stories260K")]
    command += args + calibration
    command += ["--dtype", "float32", "--device", "cpu", "--no-checkpoint", "--out", str(out)]
    done = subprocess.run(command, env=env, cwd=tempfile.gettempdir(), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {' '.join(args)} failed:\n{done.stderr.decode()[-2000:]}")


def fingerprints(folder: Path) -> dict:
    """sha256 of every saved tensor, and the per-layer table."""
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                t = f.get_tensor(key).contiguous()
                tensors[key] = hashlib.sha256(t.view(-1).view(torch.uint8).numpy()).hexdigest()
    rows = json.loads((folder / "config.json").read_text())["quantization_config"]["layers"]
    return {"tensors": tensors, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--only", nargs="*", help="config names (default: all)")
    parser.add_argument("--protocol", action="store_true", help="acceptance settings, 128 × 256")
    args = parser.parse_args()
    configs = PROTOCOL_CONFIGS if args.protocol else CONFIGS
    unknown = sorted(set(args.only or ()) - set(configs))
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(configs)}")
    samples, length = ("128", "256") if args.protocol else ("16", "128")
    calibration = ["--calibration", str(ASSETS / "text" / "wikitext2-valid.tokens.txt")]
    calibration += ["--num-samples", samples, "--max-length", length]
    differ = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)  # fmt: skip
        try:
            for name in args.only or configs:
                found, seconds = {}, {}
                for label, tree in (("base", base), ("work", ROOT)):
                    out = Path(tmp) / f"{label}-{name}"
                    start = time.perf_counter()
                    quantize(tree, out, configs[name], calibration)
                    seconds[label] = time.perf_counter() - start
                    found[label] = fingerprints(out)
                same = found["base"] == found["work"]
                differ += not same
                count = len(found["work"]["tensors"])
                print(
                    f"{name}: {'identical' if same else 'DIFFERENT'} ({count} tensors); "
                    f"{seconds['base']:.1f} s base, {seconds['work']:.1f} s work",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
