"""Real-size benchmark (issue 12, benchmarks.md "Real-size protocol"): time and memory at depth.

Builds (once, cached under ``--models``) the synthetic Llama with TinyLlama's
layer shapes at each ``--blocks`` depth, runs the real CLI on it in a
subprocess for each ``--methods`` entry (GPTQ 4-bit g128; DBF 1.5 bits with
its defaults) on 32 × 256 tokens of wikitext2-valid, and appends one JSON
line per run to ``benchmarks/results/scale.jsonl``:

- ``wall_s`` (the whole process) and ``engine_s`` (the quantize step as the
  CLI times it), ``peak_tree_mb`` (sampled sum of RSS over the process tree)
  and ``maxrss_mb`` (the kernel's peak of its largest process), the model's
  fp32 weight bytes and ``peak_over_model``;
- the engine's ``timings`` from ``--summary-json`` when it writes them
  (forwards, statistics, solves, one calibration forward), else "n/a"; the
  sum of the layer solves from the per-layer table otherwise;
- ``ratio_wall`` / ``ratio_engine``: wall (process / engine) over (one
  calibration forward + the sum of the layer solves), item 3's ratio.

``--distributed N`` runs each case twice: one process with one thread, then
``torchrun --nproc-per-node N --no-python onecomp quantize …`` with one
thread per rank, and reports the speedup and whether every saved tensor is
bit-identical. Every run has a ``--timeout``; a run stopped there is recorded
with ``status: "timeout"``.

    flock /tmp/onecomp-cpu.lock python benchmarks/scale.py --blocks 2 4 --methods gptq
    flock /tmp/onecomp-cpu.lock python benchmarks/scale.py --quick
    flock /tmp/onecomp-cpu.lock python benchmarks/scale.py --blocks 4 --methods gptq --distributed 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_report  # noqa: E402
import synthetic_model  # noqa: E402
from common import CALIBRATION, RESULTS, ROOT, STORIES, emit  # noqa: E402
from process_tree import MB, run_tree  # noqa: E402

#: the protocol's settings per method (DBF: its defaults at 1.5 bits)
METHODS = {"gptq": ["wbits=4", "groupsize=128"], "dbf": ["target_bits=1.5"]}
BIN = Path(sys.executable).parent
#: wraps each rank of a torchrun run: prints its user and system CPU seconds
RANK_TIMER = ["/usr/bin/time", "-f", "rank-cpu %U %S"] if Path("/usr/bin/time").exists() else []


def quantize_command(
    model: Path,
    method: str,
    out: Path,
    summary: Path,
    samples: int,
    length: int,
    device: str,
    checkpoint: bool = True,
    extra: tuple[str, ...] = (),
    progress: bool = False,
) -> list[str]:
    """The ``onecomp quantize`` arguments of one run (without the program); ``extra``:
    settings after the protocol's (``--set KEY=VALUE``)."""
    args = ["quantize", str(model), "--method", method]
    for setting in [*METHODS[method], *extra]:
        args += ["--set", setting]
    args += ["--calibration", str(CALIBRATION), "--num-samples", str(samples)]
    args += ["--max-length", str(length), "--seed", "0", "--strategy", "concat_chunk"]
    args += ["--out", str(out), "--overwrite"] + ([] if progress else ["--quiet"])
    args += ["--no-checkpoint"] if not checkpoint else []
    return args + ["--summary-json", str(summary), "--device", device]


def checkout_path() -> str:
    """This checkout's core and plugins first on the path, whatever the interpreter has installed.

    A venv made for one checkout and copied for another still maps ``onecomp_core``
    and the plugins to the first; the benchmark measures the code it lives beside.
    """
    roots = [ROOT, *sorted((ROOT / "plugins").glob("*/")), *sorted(ROOT.glob("examples/*/"))]
    return os.pathsep.join(str(r) for r in roots)


def code_location(env: dict[str, str]) -> str:
    """The checkout whose ``onecomp_core`` and GPTQ/DBF plugins the runs import ("mixed" if not one)."""
    import subprocess

    probe = "import onecomp_core, onecomp_gptq, onecomp_dbf as m, pathlib as p\n"
    probe += "print(*{str(p.Path(x.__file__).parents[i]) for x, i in "
    probe += "((onecomp_core, 1), (onecomp_gptq, 3), (m, 3))})"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    roots = done.stdout.split()
    return roots[0] if len(roots) == 1 else f"mixed: {' '.join(roots) or done.stderr[-200:]}"


def run_env(threads: int, progress: bool = False) -> dict[str, str]:
    """The child's environment: ``threads`` compute threads (0: leave torch's default)."""
    # the checkout first; a PYTHONPATH already set stays after it (wheels installed with --target)
    path = os.pathsep.join(p for p in (checkout_path(), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "ONECOMP_QUIET": "0" if progress else "1", "PYTHONPATH": path}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    else:
        env.pop("OMP_NUM_THREADS", None)
    return env


def measure(
    model: Path,
    method: str,
    work: Path,
    samples: int = 32,
    length: int = 256,
    threads: int = 1,
    ranks: int = 1,
    timeout: float | None = None,
    device: str = "auto",
    checkpoint: bool = True,
    extra: tuple[str, ...] = (),
    progress: bool = False,
) -> dict:
    """One quantize run of ``model`` through the CLI (under torchrun when ``ranks`` > 1)."""
    out = work / f"{model.name}-{method}-{ranks}r"
    summary = out.with_name(out.name + ".summary.json")
    summary.unlink(missing_ok=True)
    args = quantize_command(
        model, method, out, summary, samples, length, device, checkpoint, extra, progress
    )
    if ranks > 1:
        program = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={ranks}"]
        program += ["--no-python", *RANK_TIMER, str(BIN / "onecomp")]
    elif (BIN / "onecomp").exists():
        program = [str(BIN / "onecomp")]
    else:  # installed without its script (pip --target on a GPU machine): the same CLI
        program = [sys.executable, "-m", "onecomp_core"]
    load_before = os.getloadavg()[0]
    cpu_before = _children_cpu_s()
    run = run_tree(
        program + args,
        env=run_env(threads, progress),
        timeout=timeout,
        log_dir=work / f"{out.name}.logs",
    )
    cpu_s = _children_cpu_s() - cpu_before
    model_bytes = synthetic_model.weight_bytes(model)
    record = {
        "method": method,
        "settings": [*METHODS[method], *extra],
        "samples": f"{samples}x{length}",
        "threads": threads or "default",
        "ranks": ranks,
        "checkpoint": checkpoint,
        "status": "timeout" if run.timed_out else ("ok" if run.returncode == 0 else "failed"),
        "wall_s": round(run.wall_s, 1),
        # CPU seconds of the whole tree over wall: ~1 for one thread, ~N when N ranks ran side
        # by side (a shared machine shows here when they did not)
        "cpu_s": round(cpu_s, 1),
        "cores_used": round(cpu_s / run.wall_s, 2) if run.wall_s > 0 else scale_report.NA,
        "peak_tree_mb": round(run.peak_tree_rss_mb),
        "maxrss_mb": round(run.maxrss_largest_mb),
        "model_mb": round(model_bytes / 1e6, 1),
        "peak_over_model": round(run.peak_tree_rss_mb * MB / model_bytes, 3),
    }
    if record["status"] == "failed":
        lines = [x for x in run.stderr.splitlines() if x.strip() and set(x.strip()) != {"="}]
        ours = [x for x in lines if x.startswith("onecomp")]  # the CLI's one-line errors
        record["error"] = (ours or lines)[-3:] or ["(no stderr)"]
    if ranks > 1:  # each rank's CPU seconds: the busiest one bounds the run on free cores
        record["rank_cpu_s"] = [
            round(float(user) + float(system), 1)
            for user, system in re.findall(r"rank-cpu ([\d.]+) ([\d.]+)", run.stderr)
        ]
    if summary.is_file():
        record |= scale_report.timing_fields(json.loads(summary.read_text()), run.wall_s)
    record["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    record["output"] = str(out)
    return record


def _children_cpu_s() -> float:
    """User + system CPU seconds of every finished child process tree so far."""
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def reference_forward(model: Path, samples: int, length: int, threads: int) -> float | str:
    """One calibration forward through ``model``'s blocks, timed in a process of its own."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("reference_forward.py")), str(model)]
        + ["--num-samples", str(samples), "--max-length", str(length)],
        env=run_env(threads),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return scale_report.NA
    return json.loads(done.stdout.strip().splitlines()[-1])["forward_s"]


def _emit(*parts: dict, out: str) -> None:
    record = {k: v for part in parts for k, v in part.items() if k != "output"}
    emit(record, out or None)


def _cases(args: argparse.Namespace) -> list[tuple[int, str]]:
    return [(blocks, method) for blocks in args.blocks for method in args.methods]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="/tmp/onecomp-scale", help="cache of built models")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--methods", nargs="+", default=["gptq", "dbf"], choices=sorted(METHODS))
    parser.add_argument("--shape", default="tinyllama", choices=sorted(synthetic_model.SHAPES))
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 blocks, 8 × 128 tokens (per rank)"
    )
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="per process; 0 = torch default")
    parser.add_argument("--device", default="auto", help="passed to onecomp: auto, cpu, cuda:N")
    parser.add_argument("--distributed", type=int, default=0, metavar="N", help="torchrun ranks")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--max-shard-mb", type=float, default=500, help="shard size of the model")
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="pass --no-checkpoint (default: the CLI's)"
    )
    parser.add_argument(
        "--reference-forward",
        action="store_true",
        help="also time one calibration forward in a separate process (for engines without"
        " timings)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the quantized outputs")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="the CLI's progress bars into each run's stderr log (a stopped run shows how far"
        " it got)",
    )
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method setting after the protocol's (e.g. fewer DBF iterations for a memory-only"
        " run; recorded in the row's settings)",
    )
    parser.add_argument("--label", default="")
    parser.add_argument("--out", default=str(RESULTS / "scale.jsonl"), help="'' = print only")
    args = parser.parse_args(argv)
    if args.quick:  # under --distributed N: one batch (of the CLI's 8) per rank
        args.blocks, args.num_samples, args.max_length = [2], 8 * max(1, args.distributed), 128
    if args.distributed == 1 or args.distributed < 0:
        parser.error(f"--distributed {args.distributed}: give N ≥ 2 ranks (or leave it out)")
    if min(args.blocks) < 1:
        parser.error(f"--blocks {args.blocks}: each depth must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.distributed:
        missing = scale_report.distributed_missing()
        if missing:
            print(f"--distributed {args.distributed}: {missing}", file=sys.stderr)
            return 2
    context = scale_report.context(argv if argv is not None else sys.argv[1:])
    context["code"] = code_location(run_env(1))
    Path(args.models).mkdir(parents=True, exist_ok=True)
    forwards: dict[int, float | str] = {}
    for blocks, method in _cases(args):
        model = synthetic_model.cached(
            args.models,
            blocks,
            args.shape,
            tokenizer=STORIES,
            max_shard_bytes=int(args.max_shard_mb * 1e6),
        )
        with tempfile.TemporaryDirectory(dir=args.models, prefix="run-") as tmp:
            work = Path(tmp) if not args.keep else Path(args.models) / "runs"
            work.mkdir(parents=True, exist_ok=True)
            common = dict(
                samples=args.num_samples,
                length=args.max_length,
                timeout=args.timeout,
                device=args.device,
                checkpoint=not args.no_checkpoint,
                extra=tuple(args.extra),
                progress=args.progress,
            )
            base = {"benchmark": "scale", "label": args.label, "shape": args.shape}
            base["blocks"] = blocks
            if not args.distributed:
                record = measure(model, method, work, threads=args.threads, **common)
                if args.reference_forward:
                    if blocks not in forwards:
                        forwards[blocks] = reference_forward(
                            model, args.num_samples, args.max_length, args.threads
                        )
                    record |= scale_report.reference_fields(record, forwards[blocks])
                _emit(base, record, context, out=args.out)
                continue
            single = measure(model, method, work, threads=1, **common)
            _emit(base, single, context, out=args.out)
            multi = measure(model, method, work, threads=1, ranks=args.distributed, **common)
            multi |= scale_report.compare_runs(single, multi)
            _emit(base, multi, context, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
