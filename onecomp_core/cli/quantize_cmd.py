"""``onecomp quantize MODEL --method NAME --out DIR``: the main job."""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from ..contract import Method
from ..data.calibration import STRATEGIES, CalibrationConfig
from ..registry import create_method
from ..storage import lock
from ..storage.atomic import remove_leftovers
from ..storage.destination import check_destination
from ..storage.save_dtype import SAVE_DTYPES
from ..transforms.rotation import check_model_supported, check_rotation
from .checks import check_before_work
from .options import (
    add_context_option,
    add_model_options,
    model_config,
    parse_settings,
    quiet_requested,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a model and save it")
    p.add_argument("model", help="local model folder or Hugging Face hub id")
    p.add_argument("--method", required=True, help="quantization method (see `onecomp plugins`)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, value parsed as JSON when possible (repeatable)",
    )
    p.add_argument(
        "--bits", type=float, help="the method's bit width (what B bits means is the method's)"
    )
    p.add_argument(
        "--calibration",
        help="calibration text: a .txt/.jsonl/.json/.parquet path, a hub name, or what a plugin source reads (see `onecomp plugins`)",
    )
    p.add_argument("--text-key", default="text", help="column holding the text (jsonl/parquet)")
    p.add_argument("--strategy", default=STRATEGIES[0], choices=STRATEGIES)
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--qep",
        action="store_true",
        help="quantization error propagation (methods that use calibration statistics)",
    )
    p.add_argument(
        "--set-qep",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="QEP setting: percdamp, perccorr, exclude_layer_keywords (repeatable)",
    )
    p.add_argument(
        "--checkpoint-dir",
        help="where progress is saved after each block (default: OUT.checkpoint); "
        "rerunning the same command resumes there; removed after a successful save",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint folder's progress and start over "
        "(a checkpoint of another model or other settings is refused otherwise)",
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="do not save progress per block (a crash loses the whole run)",
    )
    p.add_argument(
        "--offload-activations",
        metavar="DIR",
        help="keep the calibration activations between blocks as files under DIR "
        "(for calibration sets larger than memory)",
    )
    p.add_argument(
        "--rotate",
        metavar="KIND",
        help="hadamard: fold a seeded orthogonal rotation into the model before quantizing "
        "(Llama-style models; any method); learned: that rotation and per-channel scales "
        "trained first for the method's grid (whole model in memory, up to 2 GB of weights)",
    )
    p.add_argument("--rotate-seed", type=int, default=0, help="seed of the --rotate transforms")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--save-dtype",
        choices=list(SAVE_DTYPES),
        help="dtype of the tensors left unquantized (embeddings, norms, head); default: the "
        "checkpoint's when it is float16/bfloat16, else float16",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--summary-json", help="also write the per-layer summary to this file")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or table (also ONECOMP_QUIET=1)"
    )
    add_context_option(p)
    add_model_options(p)
    p.set_defaults(run=run)


def _method(args: argparse.Namespace) -> Method:
    """The method from --method, --set and --bits, validated (every problem in one error)."""
    method = create_method(args.method, **parse_settings(args.set))
    if args.bits is None:
        return method
    try:
        return method.with_bits(args.bits)
    except NotImplementedError:
        raise ValueError(
            f"--bits: method {args.method!r} has no bit-width parameter; use --set"
        ) from None


def _qep_config(args: argparse.Namespace):
    from ..engine.qep import QEPConfig

    settings = parse_settings(args.set_qep, option="--set-qep")
    if settings and not args.qep:
        raise ValueError("--set-qep needs --qep")
    return QEPConfig.from_user(settings, "--set-qep")


def _checkpoint_dir(args: argparse.Namespace, out: Path) -> Path | None:
    if args.no_checkpoint:
        if args.restart:
            raise ValueError("--restart discards a checkpoint: it has no use with --no-checkpoint")
        return None
    folder = (
        Path(args.checkpoint_dir)
        if args.checkpoint_dir
        else out.with_name(out.name + ".checkpoint")
    )
    if folder.resolve() == out.resolve():
        raise ValueError(f"--checkpoint-dir {folder} is the output folder; choose another one")
    return folder


def run(args: argparse.Namespace) -> int:
    from ..engine import launch

    # every check before joining a torchrun group: all ranks fail alike, none waits for another
    args.quiet = quiet_requested(args.quiet)
    out = check_destination(args.out, args.overwrite)
    method = _method(args)
    calibration = CalibrationConfig(
        dataset=args.calibration,
        text_key=args.text_key,
        max_length=args.max_length,
        num_calibration_samples=args.num_samples,
        strategy=args.strategy,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    checkpoint_dir = _checkpoint_dir(args, out)
    qep_config = _qep_config(args)
    rotation = check_rotation(args.rotate)
    if rotation is not None:
        check_model_supported(args.model)
    check_before_work(args, method, out, checkpoint_dir)  # before the model is loaded
    device = launch.rank_device(args.device)
    if method.needs().calibration or args.qep:
        launch.launched().check_batches(-(-args.num_samples // max(1, args.batch_size)))
    with launch.process_group(device) as ranks:
        return _on_rank(
            args, out, method, calibration, (checkpoint_dir, qep_config, rotation), ranks, device
        )


def _on_rank(args, out: Path, method: Method, calibration, settings, ranks, device: str) -> int:
    """This process's part: locks and output on rank 0 only (one process: all of it)."""
    from ..seed_api import Runner

    checkpoint_dir, qep_config, rotation = settings
    block_ends: list[float] = []  # when each block was done: --summary-json's block_s
    with ExitStack() as held:
        if ranks.is_writer:  # rank 0 writes; a second run on the same --out stops here
            held.enter_context(lock.holding(lock.beside(out), f"output {out}"))
            remove_leftovers(out)
        if checkpoint_dir is not None and ranks.is_writer:
            held.enter_context(
                lock.holding(lock.inside(checkpoint_dir), f"checkpoint folder {checkpoint_dir}")
            )
        runner = Runner(
            model_config=model_config(args.model, args.dtype, device),
            quantizer=method,
            calibration_config=calibration,
            checkpoint_dir=checkpoint_dir,
            show_progress=not args.quiet and ranks.is_writer,
            qep=args.qep,
            qep_config=qep_config,
            restart=args.restart,
            rotation=rotation,
            rotation_seed=args.rotate_seed,
            save_dtype=args.save_dtype,
            block_callback=lambda _view: block_ends.append(time.perf_counter()),
        )
        return _quantize(args, out, runner, checkpoint_dir, ranks, block_ends)


def _quantize(
    args: argparse.Namespace,
    out: Path,
    runner,
    checkpoint_dir: Path | None,
    ranks,
    block_ends: list[float],
) -> int:
    """Run, save, clean up (under the locks :func:`run` holds)."""
    from ..engine.checkpoint import CheckpointMismatch

    start = time.perf_counter()
    try:
        runner.quantize_to(out, args.overwrite, args.offload_activations)
    except CheckpointMismatch as err:
        raise ValueError(
            f"{err.problem}; pass --restart to start over, or another --checkpoint-dir"
        ) from None
    results = runner.results
    elapsed = time.perf_counter() - start
    if not ranks.is_writer:
        return 0  # rank 0 writes the output
    if not args.quiet:
        runner.print_quantization_results()
    if checkpoint_dir is not None and args.checkpoint_dir is None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if args.summary_json:
        summary = runner.summary() | {"wall_time_s": round(elapsed, 3)}
        summary |= _run_figures(start, block_ends)
        floor = summary["timings"].get("one_forward_s", 0) + summary["timings"].get("solve_s", 0)
        if floor > 0:  # issue 12's measure of passes: wall / (one forward + the solves)
            summary["wall_over_forward_and_solves"] = round(elapsed / floor, 3)
        Path(args.summary_json).write_text(json.dumps(summary, indent=1))
    print(
        f"quantized {len(results)} layers with {args.method} in {elapsed:.1f} s; saved to {out}",
        file=sys.stderr,
    )
    return 0


def _run_figures(start: float, block_ends: list[float]) -> dict:
    """Seconds per block (the first one from the run's start: loading and calibration
    included) and, on a GPU, the peak of the compute device's memory: what a real-size
    benchmark reports beside the process's resident memory."""
    import torch

    ends = [start, *block_ends]
    figures: dict = {"block_s": [round(b - a, 3) for a, b in itertools.pairwise(ends)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        figures["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        figures["cuda_peak_reserved_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    return figures
