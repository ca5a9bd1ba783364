"""The seed-compatible API: a thin facade over the engine, storage and evaluation.

``Runner(model_config=…, quantizer=…, calibration_config=…).run()`` loads the
model and the calibration data, hands them to the
:class:`~onecomp_core.engine.walk.Engine`, and offers the seed's save and
evaluation calls. ``Quantizer`` / ``QuantizationResult`` are the seed names of
the contract's ``Method`` / ``LayerResult``; ``save_results``,
``load_results``, ``apply_results_to_model`` and ``ResultLoader`` work on the
results a run returns.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from torch import nn

from . import registry
from .contract import BlockView, LayerResult, Method
from .data import fingerprint
from .data.adapters import linearize_conv1d
from .data.calibration import CalibrationConfig, batches, build_calibration
from .data.model import ModelConfig
from .engine.blocks import find_blocks
from .engine.checkpoint import BlockCheckpoint
from .engine.distributed import Ranks
from .engine.qep import QEPConfig
from .engine.walk import Engine, choose_layers
from .storage import artifact as saving
from .storage import results_io
from .storage.packed import apply_results, packed_model
from .storage.save_dtype import choose_save_dtype
from .transforms.learned import rotate_model_learned, target_grid
from .transforms.rotation import attach_online, check_rotation, rotate_model

logger = logging.getLogger(__name__)

#: seed names of the contract's classes
Quantizer = Method
QuantizationResult = LayerResult


def save_results(results: dict[str, LayerResult], path: str | Path) -> None:
    """Write results as safetensors + JSON (no pickle) into the folder ``path``."""
    results_io.save_results(results, path)


def load_results(path: str | Path) -> dict[str, LayerResult]:
    """Results saved by :func:`save_results` (classes found through the registry)."""
    return results_io.load_results(path)


def apply_results_to_model(model: nn.Module, results: dict[str, LayerResult]) -> nn.Module:
    """Write every result's dequantized weight into ``model`` (a "fake-quantized" model)."""
    return apply_results(model, results)


class ResultLoader:
    """Results saved by an earlier run, replayed without running the method again."""

    def __init__(self, results_path: str | Path) -> None:
        self.results_path = str(results_path)
        self.results = load_results(results_path)

    def inference_layer(self, result: LayerResult, linear: nn.Module) -> nn.Module:
        return registry.get_method(result.method)().inference_layer(result, linear)


class Runner:
    """Seed API: ``Runner(model_config=..., quantizer=..., calibration_config=...).run()``."""

    def __init__(
        self,
        model_config: ModelConfig,
        quantizer: Method,
        calibration_config: CalibrationConfig | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        show_progress: bool | None = None,
        block_callback: Callable[[BlockView], None] | None = None,
        qep: bool = False,
        qep_config: QEPConfig | None = None,
        restart: bool = False,
        rotation: str | None = None,
        rotation_seed: int = 0,
        save_dtype: str | None = None,
    ) -> None:
        self.model_config = model_config
        self.save_dtype = save_dtype and str(choose_save_dtype(None, save_dtype))[6:]  # checked
        self.quantizer = quantizer
        self.calibration_config = calibration_config or CalibrationConfig()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        quiet = os.environ.get("ONECOMP_QUIET", "") not in ("", "0")
        self.show_progress = (not quiet) if show_progress is None else show_progress
        self.block_callback = block_callback
        self.qep, self.qep_config = qep, qep_config or QEPConfig()
        #: discard what ``checkpoint_dir`` holds instead of resuming it
        self.restart = restart
        #: "hadamard": a seeded rotation folded into the model before quantization (its spec);
        #: "learned": that rotation trained for the method's grid first (transforms/learned.py)
        self.rotation, self.rotation_seed = check_rotation(rotation, "rotation"), rotation_seed
        self.rotation_spec: dict[str, Any] | None = None
        self.model: nn.Module | None = None
        self._model_folder: Path | None = None
        self.tokenizer = None
        self.calibration = None
        self.layers: dict[str, nn.Module] = {}
        self.results: dict[str, LayerResult] = {}
        self.quantized = False
        self.conv1d_linearized = 0

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, LayerResult]:
        """Quantize every selected layer; returns the results (also ``self.results``)."""
        self._load()
        if self.rotation is not None and self.rotation_spec is None:
            self.rotation_spec = self._rotate()
        self.layers = choose_layers(self.model, self.quantizer)
        logger.info("selected %d layers", len(self.layers))
        return self.run_engine()

    def run_engine(self, **streaming: Any) -> dict[str, LayerResult]:
        """Calibrate when needed and run the engine on the loaded model and chosen layers.

        ``streaming``: the engine's ``source``, ``writer`` and ``offload`` for a streamed run.
        """
        needs = self.quantizer.needs()
        if self.qep:
            self._check_qep(needs.inputs)
        calibrated = needs.calibration or self.qep
        with self._open_checkpoint(calibrated) as checkpoint:
            if calibrated:
                self._calibrate()
            if checkpoint is not None:
                sha = self.calibration.sha256 if self.calibration else None
                checkpoint.expect(**{"calibration windows": sha})
            data = (
                list(batches(self.calibration, self.calibration_config.batch_size))
                if self.calibration is not None
                else []
            )
            engine = Engine(
                self.model,
                self.quantizer,
                self.layers,
                data,
                self.model_config.resolve_device(),
                checkpoint=(lambda: self._resume(checkpoint)) if checkpoint else None,
                qep=self.qep_config if self.qep else None,
                show_progress=self.show_progress,
                block_callback=self.block_callback,
                **streaming,
            )
            self.results = engine.run()
            self.timings = dict(engine.timings)
        self.quantized = True
        return self.results

    # -- the streamed run: the model never whole in memory, the output written per block ----------
    def quantize_to(
        self,
        out: str | Path,
        overwrite: bool = False,
        offload_activations: str | Path | None = None,
    ) -> Path:
        """Quantize and save to ``out``, streaming the model block by block from its folder.

        A model that cannot be streamed (see :func:`~onecomp_core.streaming.whole_model_reason`)
        is loaded whole, with a one-line notice, and saved as :meth:`save_quantized_model` does.
        ``offload_activations``: a folder that holds the calibration activations between blocks.
        """
        from .streaming import quantize_to

        return quantize_to(self, out, overwrite, offload_activations)

    def _load(self) -> None:
        if self.model is None:
            self.model = self.model_config.load_model()
            self._model_folder = fingerprint.local_folder(self.model_config.source)
            self.tokenizer = self.model_config.load_tokenizer()
            self.conv1d_linearized = linearize_conv1d(self.model)

    def _rotate(self) -> dict[str, Any]:
        """Fold the chosen rotation into the loaded model; the spec to save."""
        if self.rotation != "learned":
            return rotate_model(self.model, self.rotation_seed)
        self._calibrate()  # the learned rotation trains on the calibration windows
        bits, group = target_grid(self.quantizer)
        windows = self.calibration.input_ids
        return rotate_model_learned(self.model, windows, bits, group, self.rotation_seed)

    def _calibrate(self) -> None:
        self.calibration = build_calibration(self.calibration_config, self.tokenizer, self.model)

    def _check_qep(self, inputs: str) -> None:
        self.qep_config.validate()
        if inputs == "none":
            raise ValueError(
                f"QEP corrects weights with calibration statistics, but method "
                f"{self.quantizer.method!r} takes none; run it without --qep"
            )

    # -- checkpoints and resume ------------------------------------------------------------------
    @contextmanager
    def _open_checkpoint(self, calibrated: bool) -> Iterator[BlockCheckpoint | None]:
        """The locked checkpoint, emptied on ``restart``, else checked against what is known
        before any long work: the model by content, the settings, the versions."""
        if self.checkpoint_dir is None:
            yield None
            return
        checkpoint = BlockCheckpoint(self.checkpoint_dir)
        ranks = Ranks.current()  # under torchrun rank 0 holds, empties and writes the folder
        with checkpoint.locked() if ranks.is_writer else nullcontext():
            if self.restart and ranks.is_writer:
                checkpoint.discard()
            ranks.barrier()  # the others read it after that
            checkpoint.expect(**self._model_key())
            checkpoint.expect(
                settings=self._settings(calibrated), versions=fingerprint.run_versions()
            )
            yield checkpoint

    def _model_key(self) -> dict[str, Any]:
        """The model's files by content; a model handed over in memory by its tensors."""
        if self._model_folder is not None:
            key = fingerprint.folder_key(self._model_folder)
            if key["model weights"]:
                return key
            # weights where we do not look for them: what was loaded is hashed instead
            return {**key, **fingerprint.tensors_key(self.model.state_dict())}
        config = {k: v for k, v in self.model.config.to_dict().items() if k != "_name_or_path"}
        return {
            **fingerprint.tensors_key(self.model.state_dict()),
            "model config": {"config": fingerprint.settings_digest(config)},
        }

    def _settings(self, calibrated: bool) -> dict[str, Any]:
        """Every setting that changes the result (calibration ones only when it is used)."""
        calibration = {
            f.name: getattr(self.calibration_config, f.name)
            for f in dataclasses.fields(self.calibration_config)
            if f.name != "dataset"  # by content: the "calibration windows" part
        }
        return {
            "method": fingerprint.config_settings(self.quantizer),
            "layers": sorted(self.layers),
            "dtype": str(self.model_config.dtype),
            "device": self.model_config.resolve_device().type,
            "calibration": calibration if calibrated else None,
            "qep": dataclasses.asdict(self.qep_config) if self.qep else None,
            "rotation": [self.rotation, self.rotation_seed] if self.rotation else None,
            **({"save dtype": self.save_dtype} if self.save_dtype else {}),
        }

    def _resume(self, checkpoint: BlockCheckpoint) -> BlockCheckpoint:
        """Asked for by the engine after ``prepare``, so a plan is part of the key."""
        checkpoint.expect(plan=self.quantizer.to_dict())
        done = checkpoint.finished_blocks()
        if done and Ranks.current().is_writer:
            total = len(find_blocks(self.model)[1])
            print(
                f"onecomp: resuming after block {done} of {total} ({checkpoint.folder})",
                file=sys.stderr,
                flush=True,
            )
        return checkpoint

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """JSON-ready per-layer table and totals."""
        rows = []
        for name, result in self.results.items():
            module = self.layers.get(name)
            out_f, in_f = module.weight.shape if module is not None else (None, None)
            row = {
                "layer": name,
                "method": result.method or self.quantizer.method,
                "time_s": round(result.quantization_time, 4),
                "bits": result.effective_bits(out_f, in_f) if out_f else None,
            }
            for key in (
                "relative_output_squared_error",
                "relative_weight_squared_error",
                "mean_output_squared_error",
                "mean_weight_squared_error",
            ):
                row[key] = getattr(result, key)
            if result.fallback:
                row["fallback"] = result.fallback
            rows.append(row)
        return {
            "method": self.quantizer.method,
            "layers": rows,
            "total_time_s": round(sum(r["time_s"] for r in rows), 3),
            "calibration_hash": self.calibration.sha256 if self.calibration else None,
            "timings": self._timings(),
        }

    def _timings(self) -> dict[str, float]:
        """Seconds per engine phase; ``one_forward_s`` is one calibration forward of the model."""
        timings = getattr(self, "timings", None) or {}
        out = {key: round(value, 6) for key, value in sorted(timings.items())}
        if "forward_s" in timings:
            out["one_forward_s"] = round(timings.get("capture_s", 0) + timings["forward_s"], 6)
        return out

    def print_quantization_results(self) -> None:
        from .table import format_table

        print(format_table(self.summary()["layers"]))

    # -- outputs ---------------------------------------------------------------------------------
    def _require_run(self) -> None:
        if not self.quantized:
            raise RuntimeError("call Runner.run() first")

    def create_quantized_model(self) -> nn.Module:
        """A model with packed inference layers (``self.model`` stays fake-quantized)."""
        self._require_run()
        model = packed_model(self.model, self.quantizer, self.results, bool(self.conv1d_linearized))
        return attach_online(model, self.rotation_spec)

    def artifact(self):
        """The run as a save/export format receives it."""
        self._require_run()
        extra = {
            "calibration_hash": self.calibration.sha256 if self.calibration else None,
            "qep": dataclasses.asdict(self.qep_config) if self.qep else None,
            "conv1d_as_linear": bool(self.conv1d_linearized),
            "rotation": self.rotation_spec,
            "save_dtype": self.resolved_save_dtype(),
        }
        return saving.build_artifact(
            self.model, self.quantizer, self.results, self.tokenizer, extra
        )

    def resolved_save_dtype(self) -> Any:
        """The torch dtype the unquantized tensors are saved in (:mod:`.storage.save_dtype`)."""
        return choose_save_dtype(self.model_config.checkpoint_dtype(), self.save_dtype)

    def save_quantized_model(
        self, out_dir: str | Path, overwrite: bool = False, format: str = "hf"
    ) -> Path:
        return saving.save_quantized_model(self.artifact(), out_dir, overwrite, format)

    def save_dequantized_model(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        self._require_run()
        return saving.save_dequantized_model(self.model, self.tokenizer, out_dir, overwrite)

    def save_quantization_results(self, path: str | Path) -> None:
        self._require_run()
        save_results(self.results, path)

    def calculate_perplexity(
        self, text_or_path: str | Path, model: str = "dequantized", **kwargs: Any
    ):
        """Perplexity of the "dequantized" model in memory, the packed "quantized" one, or the
        "original" (reloaded from its source)."""
        from .evaluation import calculate_perplexity

        self._require_run()
        return calculate_perplexity(self._model_for(model), self.tokenizer, text_or_path, **kwargs)

    def calculate_accuracy(self, jsonl_path: str | Path, **kwargs: Any):
        from .evaluation import calculate_accuracy

        self._require_run()
        which = kwargs.pop("model", "dequantized")
        return calculate_accuracy(self._model_for(which), self.tokenizer, jsonl_path, **kwargs)

    def _model_for(self, which: str) -> nn.Module:
        if which == "dequantized":
            return self.model
        if which == "quantized":
            return self.create_quantized_model()
        if which == "original":
            return self.model_config.load_model()
        raise ValueError(f"model={which!r}: expected 'dequantized', 'quantized' or 'original'")


__all__ = [
    "QEPConfig",
    "QuantizationResult",
    "Quantizer",
    "ResultLoader",
    "Runner",
    "apply_results_to_model",
    "load_results",
    "save_results",
]
