"""``onecomp quantize``'s checks before any long work: outputs, the model's files and context, disk.

Everything here reads only headers and configs and creates nothing that
stays (a write probe is removed at once), so a mistake costs seconds, not
the hours a run takes before it saves. Method parameters are already
validated when the method is built (ranges declared in each plugin's
``param()``s).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..contract import Method
from ..data.model import check_context
from ..storage.destination import check_free_space, check_writable
from .options import model_config, silence_progress


def check_before_work(
    args: argparse.Namespace, method: Method, out: Path, checkpoint: Path | None
) -> None:
    """Every cheap check of a quantize run beyond the output's name (done first) and the
    method's parameters (done when it is built): checkpoint folder, model files and
    context, free disk space. ``--quiet`` also silences the libraries' progress bars."""
    if args.quiet:
        silence_progress()
    if checkpoint is not None:
        option = "--checkpoint-dir" if args.checkpoint_dir else "--out (its checkpoint folder)"
        if checkpoint.exists() and not checkpoint.is_dir():
            raise NotADirectoryError(f"{option} {checkpoint}: is a file, not a folder")
        check_writable(checkpoint, option)
    facts = model_config(args.model, args.dtype, args.device).facts()
    if method.needs().calibration or args.qep:
        check_context(args.max_length, facts.context, "--max-length", args.allow_longer_context)
    if facts.parameters:
        bits = _bits(method)
        need = int(facts.parameters * bits / 8)
        targets, sizes = {"--out": out}, {"--out": need}
        if checkpoint is not None:
            targets["checkpoint"], sizes["checkpoint"] = checkpoint, need
        check_free_space(targets, sizes)


def _bits(method: Method) -> float:
    """The method's nominal bits per weight (1 when it declares none): a lower bound of size."""
    try:
        return max(1.0, float(method.nominal_bits))
    except (NotImplementedError, TypeError, ValueError):
        return 1.0
