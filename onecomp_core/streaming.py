"""A run whose model is never whole in memory: read per block, written per block.

``Runner.quantize_to(out)`` (and so ``onecomp quantize``) uses this when the
model is a local folder of safetensors: the model is a meta skeleton
(:class:`~onecomp_core.data.streamed.StreamedModel`), the engine reads each
block from disk when it gets to it and frees it after, and a
:class:`~onecomp_core.storage.shards.ShardWriter` writes each finished block
into the partial output folder. The folder is renamed into place at the end.

Steps that still need the whole model make the run load it whole instead,
with a one-line notice naming the reason (:func:`whole_model_reason`).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from .contract import LayerResult
from .data.streamed import NotStreamable, StreamedModel, open_streamed
from .engine import blocks as blockwise
from .engine.distributed import Ranks
from .engine.heap import return_freed_memory
from .engine.offload import DiskStreams
from .engine.walk import choose_layers
from .storage.artifact import quantization_config
from .storage.atomic import check_free, partial_name
from .storage.packed import layer_table
from .storage.shards import ShardWriter
from .storage.skeleton import skeleton
from .transforms.learned import too_large_reason
from .transforms.streamed import RotatedStreamedModel

#: a seed_api.Runner (not imported: the Runner imports this module)
Runner = Any

logger = logging.getLogger(__name__)

#: the partial output folder inside a checkpoint folder (so a resumed run keeps its shards)
PARTIAL = "output.partial"


def quantize_to(
    runner: Runner, out: str | Path, overwrite: bool, offload: str | Path | None
) -> Path:
    """``runner`` quantized into ``out``: streamed when it can be, else with the whole model."""
    out = check_free(out, overwrite)
    reason = whole_model_reason(runner)
    run = None
    if reason is None:
        run = StreamedRun(runner, out, offload)
        reason = run.refusal
    ranks = Ranks.current()  # under torchrun rank 0 alone writes; all return once it has
    if reason is None:
        try:
            run.run()
            saved = run.save(overwrite) if ranks.is_writer else out
            ranks.finish_together()
            return saved
        except RuntimeError as exc:
            if not run.reads_weights_early(exc):
                raise
            reason, runner.model, runner.rotation_spec = str(exc), None, None
    logger.warning("streaming off (%s): the whole model is loaded into memory", reason)
    runner.run()
    saved = runner.save_quantized_model(out, overwrite=overwrite) if ranks.is_writer else out
    ranks.finish_together()
    return saved


def whole_model_reason(runner: Runner) -> str | None:
    """Why this run cannot stream its model (None: it can)."""
    needs = runner.quantizer.needs()
    if (needs.calibration or runner.qep) and runner.calibration_config.dataset is None:
        return "the calibration text is sampled from the model itself"
    if runner.model is not None:
        return "the model is already in memory"
    if runner.rotation == "learned":
        too_large = too_large_reason(runner.model_config.source)
        if too_large is None:
            return "--rotate learned trains its rotation on the whole model"
        print(
            f"onecomp: --rotate learned is off for this model ({too_large}); "
            "it is rotated with --rotate hadamard, streamed",
            file=sys.stderr,
            flush=True,
        )
        runner.rotation = "hadamard"
    folder = Path(runner.model_config.source).expanduser()
    if not folder.is_dir():
        return f"{runner.model_config.source} is not a local folder"
    return None


class StreamedRun:
    """One streamed run of ``runner`` into ``out``; ``refusal`` says why it cannot stream."""

    def __init__(self, runner: Runner, out: Path, offload: str | Path | None) -> None:
        self.runner, self.out, self.offload = runner, out, offload
        self.refusal: str | None = None
        config = runner.model_config
        self.folder = Path(config.source).expanduser()
        try:
            self.source: StreamedModel = open_streamed(
                self.folder, config_dtype(config), config.trust_remote_code
            )
        except NotStreamable as exc:
            self.refusal = str(exc)
            return
        model = self.source.model
        self.prefix, blocks = blockwise.find_blocks(model)
        if runner.rotation is not None:  # each part rotated as it is read
            self.source = RotatedStreamedModel(self.source, self.prefix, runner.rotation_seed)
            runner.rotation_spec = self.source.spec
        self.count = len(blocks)
        layers = choose_layers(model, runner.quantizer)
        outside = [n for n in layers if not n.startswith(self.prefix + ".")]
        if outside:
            self.refusal = f"layer {outside[0]} outside the blocks is selected"
            return
        runner.model, runner.layers = model, layers
        runner._model_folder = self.folder  # the resume key: the model's files by content
        runner.tokenizer = config.load_tokenizer()
        runner.conv1d_linearized = len(self.source.transposed)

    def run(self) -> dict[str, LayerResult]:
        return_freed_memory()
        runner = self.runner
        self.writer = None
        if not Ranks.current().is_writer:  # the other ranks of a torchrun run write nothing
            return runner.run_engine(source=self.source, offload=self._offload())
        checkpoint = runner.checkpoint_dir
        if checkpoint is not None:
            self.partial = checkpoint / PARTIAL
        else:
            parent = self.out.parent
            parent.mkdir(parents=True, exist_ok=True)
            self.partial = partial_name(self.out)
        fresh = not self.partial.exists()
        self.writer = ShardWriter(
            self.partial, self.source, self.prefix, self.count, runner.resolved_save_dtype()
        )
        try:
            return runner.run_engine(
                source=self.source, writer=self.writer, offload=self._offload()
            )
        except BaseException:
            # a checkpoint keeps its shards for the resume, unless this run made none
            if checkpoint is None or (fresh and self.writer.written == 0):
                shutil.rmtree(self.partial, ignore_errors=True)
            raise

    def _offload(self) -> DiskStreams | None:
        return DiskStreams(self.offload) if self.offload is not None else None

    def reads_weights_early(self, exc: BaseException) -> bool:
        """Whether ``exc`` says a planning step read weight values of the skeleton (AutoBit's
        weight-error scores read every layer before the first block): then the whole model
        is loaded instead. Only before any block was written."""
        return "meta tensor" in str(exc) and (self.writer is None or self.writer.written == 0)

    def save(self, overwrite: bool) -> Path:
        """Finish the folder (outer tensors, index, config, tokenizer) and rename it to ``out``."""
        runner = self.runner
        model = self.source.model
        extra = {
            "calibration_hash": runner.calibration.sha256 if runner.calibration else None,
            "qep": _qep(runner),
            "conv1d_as_linear": bool(runner.conv1d_linearized),
            "rotation": runner.rotation_spec,
        }
        rows = layer_table(model, runner.quantizer, runner.results)
        # the config a whole-model save writes: that of the packed model's frame
        config = skeleton(model.config.to_dict(), type(model)).config.to_dict()
        self.writer.finish(
            config,
            quantization_config(runner.quantizer, rows, extra, model),
            runner.tokenizer,
            self.folder,
        )
        return self.writer.publish(self.out, overwrite)


def _qep(runner: Runner) -> dict[str, Any] | None:
    import dataclasses

    return dataclasses.asdict(runner.qep_config) if runner.qep else None


def config_dtype(config: Any):
    """The run's dtype from a ModelConfig ("auto" keeps the checkpoint's)."""
    from .data.model import resolve_dtype

    dtype = resolve_dtype(config.dtype)
    if dtype == "auto":
        import json

        from .storage.skeleton import config_dtype as saved_dtype

        dtype = saved_dtype(json.loads((Path(config.source) / "config.json").read_text()))
    return dtype
