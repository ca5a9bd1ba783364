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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from . import registry
from .contract import BlockView, LayerResult, Method
from .data.adapters import linearize_conv1d
from .data.calibration import CalibrationConfig, batches, build_calibration
from .data.model import ModelConfig
from .engine.checkpoint import BlockCheckpoint, fingerprint
from .engine.qep import QEPConfig
from .engine.walk import Engine, choose_layers
from .storage import artifact as saving
from .storage import results_io
from .storage.packed import apply_results, packed_model

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
    ) -> None:
        self.model_config = model_config
        self.quantizer = quantizer
        self.calibration_config = calibration_config or CalibrationConfig()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if show_progress is None:
            show_progress = os.environ.get("ONECOMP_QUIET", "") in ("", "0")
        self.show_progress = show_progress
        self.block_callback = block_callback
        self.qep = qep
        self.qep_config = qep_config or QEPConfig()
        self.model: nn.Module | None = None
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
        self.layers = choose_layers(self.model, self.quantizer)
        logger.info("selected %d layers", len(self.layers))
        needs = self.quantizer.needs()
        if self.qep:
            self._check_qep(needs.inputs)
        if needs.calibration or self.qep:
            self._calibrate()
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
            checkpoint=self._checkpoint,
            qep=self.qep_config if self.qep else None,
            show_progress=self.show_progress,
            block_callback=self.block_callback,
        )
        self.results = engine.run()
        self.timings = dict(engine.timings)
        self.quantized = True
        return self.results

    def _load(self) -> None:
        if self.model is None:
            self.model = self.model_config.load_model()
            self.tokenizer = self.model_config.load_tokenizer()
            self.conv1d_linearized = linearize_conv1d(self.model)

    def _calibrate(self) -> None:
        self.calibration = build_calibration(self.calibration_config, self.tokenizer, self.model)

    def _check_qep(self, inputs: str) -> None:
        self.qep_config.validate()
        if inputs == "none":
            raise ValueError(
                f"QEP corrects weights with calibration statistics, but method "
                f"{self.quantizer.method!r} takes none; run it without --qep"
            )

    def _checkpoint(self) -> BlockCheckpoint | None:
        """Asked for by the engine after ``prepare``, so a plan is part of the fingerprint."""
        if self.checkpoint_dir is None:
            return None
        parts = {
            "model": self.model_config.source,
            "dtype": str(self.model_config.dtype),
            "quantizer": {"quant_method": self.quantizer.method, **self.quantizer.to_dict()},
            "layers": sorted(self.layers),
            "calibration": self.calibration.sha256 if self.calibration else None,
            "qep": dataclasses.asdict(self.qep_config) if self.qep else None,
        }
        return BlockCheckpoint(self.checkpoint_dir, fingerprint(parts))

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
        out = {key: round(value, 3) for key, value in sorted(timings.items())}
        if "forward_s" in timings:
            out["one_forward_s"] = round(timings.get("capture_s", 0) + timings["forward_s"], 3)
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
        return packed_model(self.model, self.quantizer, self.results, bool(self.conv1d_linearized))

    def artifact(self):
        """The run as a save/export format receives it."""
        self._require_run()
        extra = {
            "calibration_hash": self.calibration.sha256 if self.calibration else None,
            "qep": dataclasses.asdict(self.qep_config) if self.qep else None,
            "conv1d_as_linear": bool(self.conv1d_linearized),
        }
        return saving.build_artifact(
            self.model, self.quantizer, self.results, self.tokenizer, extra
        )

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
