"""The Runner: load a model, calibrate, and quantize it block by block.

Each repeated block (decoder layer) in turn is moved to the compute device;
forward hooks accumulate the statistics the quantizer asks for over all
calibration batches; each selected layer is quantized and its dequantized
weight written back, so later layers see quantized inputs; the block is run
once more to produce the next block's inputs and moved back. Peak memory on
the device is one block plus the calibration activations.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import adapters, blockwise
from .blockwise import BlockContext
from .checkpoint import BlockCheckpoint, fingerprint
from .model_config import ModelConfig
from .qep import PairedCollector, QEPConfig, correct_weight
from .quantizer import Quantizer
from .result import QuantizationResult
from .statistics import StatisticsCollector

logger = logging.getLogger(__name__)


@dataclass
class _Streams:
    """Calibration activations entering the current block."""

    quantized: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    token_masks: list[torch.Tensor | None]
    full_precision: list[torch.Tensor] | None = None


class Runner:
    """Seed API: ``Runner(model_config=..., quantizer=..., calibration_config=...).run()``."""

    def __init__(
        self,
        model_config: ModelConfig,
        quantizer: Quantizer,
        calibration_config: Any | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        show_progress: bool | None = None,
        block_callback: Callable[[BlockContext], None] | None = None,
        qep: bool = False,
        qep_config: QEPConfig | None = None,
    ) -> None:
        from .calibration import CalibrationConfig

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
        self.quantized = False
        self.conv1d_linearized = 0
        self._layer_bar = None

    # -- public API ---------------------------------------------------------------------
    def run(self) -> dict[str, QuantizationResult]:
        """Quantize every selected layer; returns ``quantizer.results``."""
        self._load()
        device = self.model_config.resolve_device()
        if self.qep:
            self._check_qep()
        self._keep_fp = self.quantizer.wants_fp_stream or self.qep
        self._needs_data = self.quantizer.statistics != "none" or self._keep_fp
        if self._needs_data:
            self._calibrate()
        self.quantizer.prepare(self.model, self._batches() if self._needs_data else [])
        prefix, blocks = blockwise.find_blocks(self.model)
        checkpoint = self._checkpoint()
        start = checkpoint.finished_blocks() if checkpoint else 0
        streams = self._start_streams(blocks, device, checkpoint, start)
        bar = tqdm(
            total=len(blocks),
            desc="blocks",
            disable=not self.show_progress,
            initial=start,
            unit="block",
            position=0,
        )
        self._layer_bar = tqdm(
            total=len(self.layers),
            desc="layers",
            unit="layer",
            position=1,
            initial=len(self.quantizer.results),
            leave=False,
            disable=not self.show_progress,
        )
        for index in range(start, len(blocks)):
            streams = self._quantize_block(
                index, f"{prefix}.{index}", blocks[index], streams, device, checkpoint
            )
            bar.update(1)
        self._quantize_outside_blocks(prefix, device)
        self.quantizer.on_model_quantized(self.model, self._batches() if self._needs_data else [])
        self._layer_bar.close()
        bar.close()
        self.quantized = True
        return self.quantizer.results

    def _check_qep(self) -> None:
        self.qep_config.validate()
        if self.quantizer.statistics == "none":
            raise ValueError(
                f"QEP corrects weights with calibration statistics, but method "
                f"{self.quantizer.method!r} takes none (flag_hessian/flag_xtx are off); "
                "run it without --qep"
            )

    # -- loading and calibration ------------------------------------------------------
    def _load(self) -> None:
        if self.model is None:
            self.model = self.model_config.load_model()
            self.tokenizer = self.model_config.load_tokenizer()
            self.conv1d_linearized = adapters.linearize_conv1d(self.model)
        self.layers = self.quantizer.setup(self.model)
        logger.info("selected %d layers", len(self.layers))

    def _calibrate(self) -> None:
        from .calibration import build_calibration

        self.calibration = build_calibration(self.calibration_config, self.tokenizer, self.model)

    def _batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        from .calibration import batches

        return list(batches(self.calibration, self.calibration_config.batch_size))

    def _fingerprint(self) -> str:
        return fingerprint(
            {
                "model": self.model_config.source,
                "dtype": str(self.model_config.dtype),
                "quantizer": self.quantizer.config_for_storage(),
                "layers": sorted(self.layers),
                "calibration": self.calibration.sha256 if self.calibration else None,
                "qep": dataclasses.asdict(self.qep_config) if self.qep else None,
            }
        )

    def _checkpoint(self) -> BlockCheckpoint | None:
        if self.checkpoint_dir is None:
            return None
        return BlockCheckpoint(self.checkpoint_dir, self._fingerprint())

    def _start_streams(
        self,
        blocks: nn.ModuleList,
        device: torch.device,
        checkpoint: BlockCheckpoint | None,
        start: int,
    ) -> _Streams | None:
        if start:
            self._restore(blocks, checkpoint, start, device)
        if not self._needs_data:
            return None
        batches = self._batches()
        self._outer_to(blocks, device)
        inputs, kwargs = blockwise.capture_inputs(self.model, blocks[0], batches, device)
        self._outer_to(blocks, torch.device("cpu"))
        masks = [self._token_mask(mask) for _, mask in batches]
        fp = [x.clone() for x in inputs] if self._keep_fp else None
        if start:
            saved = checkpoint.load_streams(start, device)
            inputs, fp = saved["quantized"], saved.get("full_precision")
        return _Streams(inputs, kwargs, masks, fp)

    @staticmethod
    def _token_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
        return None if mask is None or bool(mask.all()) else mask

    def _outer_to(self, blocks: nn.ModuleList, device: torch.device) -> None:
        """Move everything but the blocks (embeddings, rotary tables, final norm)."""
        inside = {id(t) for t in [*blocks.parameters(), *blocks.buffers()]}
        for module in self.model.modules():
            for _, p in module.named_parameters(recurse=False):
                if id(p) not in inside:
                    p.data = p.data.to(device)
            for key, b in list(module._buffers.items()):
                if b is not None and id(b) not in inside:
                    module._buffers[key] = b.to(device)

    @staticmethod
    def _block_rest(block: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """The block's tensors other than the quantized weights (norms, biases)."""
        quantized = {id(m.weight) for m in layers.values()}
        return {k: p for k, p in block.named_parameters() if id(p) not in quantized}

    def _restore(self, blocks, checkpoint: BlockCheckpoint, start: int, device) -> None:
        results = checkpoint.load_results(start)
        self.quantizer.results.update(results)
        self._write_back(results)
        for index in range(start):
            rest = checkpoint.load_rest(index)
            if rest:
                blocks[index].load_state_dict(rest, strict=False)
        logger.info("resumed after block %d of %d", start, len(blocks))

    def _write_back(self, results: dict[str, QuantizationResult]) -> None:
        for name, result in results.items():
            weight = self.layers[name].weight
            weight.data = result.compute_dequantized_weight(weight.device).to(weight.dtype)

    # -- one block ----------------------------------------------------------------------------
    def _block_layers(self, name: str) -> dict[str, nn.Module]:
        return {n: m for n, m in self.layers.items() if n.startswith(name + ".")}

    def _quantize_block(
        self,
        index: int,
        name: str,
        block: nn.Module,
        streams: _Streams | None,
        device: torch.device,
        checkpoint: BlockCheckpoint | None,
    ) -> _Streams | None:
        layers = self._block_layers(name)
        block.to(device)
        fp_block = copy.deepcopy(block) if self.qep else None
        with torch.no_grad():
            fp_out = (
                self._run_all(block, streams.full_precision, streams)
                if (streams and streams.full_precision is not None)
                else None
            )
        if streams is None:
            for layer_name in layers:
                self._quantize_one(layer_name, None)
        else:
            for group in self._groups(block, layers, streams):
                group_layers = {n: layers[n] for n in group}
                if fp_block is not None:
                    self._quantize_group_qep(block, fp_block, name, group_layers, streams)
                else:
                    self._quantize_group(block, group_layers, streams)
        del fp_block
        context = BlockContext(
            index=index,
            name=name,
            block=block,
            device=device,
            inputs=streams.quantized if streams else [],
            kwargs=streams.kwargs if streams else [],
            layers=layers,
            results={n: self.quantizer.results[n] for n in layers},
            fp_inputs=streams.full_precision if streams else None,
            fp_outputs=fp_out,
        )
        self.quantizer.on_block_quantized(context)
        if streams is not None:
            with torch.no_grad():
                streams = _Streams(
                    self._run_all(block, streams.quantized, streams),
                    streams.kwargs,
                    streams.token_masks,
                    fp_out,
                )
        block.to("cpu")
        if checkpoint is not None:
            saved = {"quantized": streams.quantized} if streams else {}
            if streams and streams.full_precision is not None:
                saved["full_precision"] = streams.full_precision
            checkpoint.save_block(index, context.results, saved, self._block_rest(block, layers))
        if self.block_callback is not None:
            self.block_callback(context)
        return streams

    def _run_all(self, block: nn.Module, inputs: list[torch.Tensor], streams: _Streams):
        return [
            blockwise.run_block(block, x, kw) for x, kw in zip(inputs, streams.kwargs, strict=True)
        ]

    def _groups(
        self, block: nn.Module, layers: dict[str, nn.Module], streams: _Streams
    ) -> list[list[str]]:
        if not layers:
            return []
        if not self.quantizer.true_sequential:
            return [list(layers)]
        return blockwise.sequential_groups(block, layers, streams.quantized[0], streams.kwargs[0])

    def _quantize_group(
        self, block: nn.Module, group: dict[str, nn.Module], streams: _Streams
    ) -> None:
        kind = self.quantizer.statistics
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(group)
        if kind != "none":
            collector = StatisticsCollector(group, kind, self.quantizer.hessian_dtype)
            with torch.no_grad(), collector.hooked():
                for x, kw, mask in zip(
                    streams.quantized, streams.kwargs, streams.token_masks, strict=True
                ):
                    collector.token_mask = mask
                    blockwise.run_block(block, x, kw)
            hessians = collector.hessians()
        for layer_name in group:
            self._quantize_one(layer_name, hessians[layer_name])

    def _quantize_group_qep(
        self,
        block: nn.Module,
        fp_block: nn.Module,
        block_name: str,
        group: dict[str, nn.Module],
        streams: _Streams,
    ) -> None:
        """Pair each layer's full-precision and quantized-stream inputs, correct, quantize."""
        fp_group = {n: fp_block.get_submodule(n[len(block_name) + 1 :]) for n in group}
        collector = PairedCollector(fp_group, group, self.quantizer.hessian_dtype)
        with torch.no_grad(), collector.hooked():
            for xq, xf, kw, mask in zip(
                streams.quantized,
                streams.full_precision,
                streams.kwargs,
                streams.token_masks,
                strict=True,
            ):
                collector.token_mask = mask
                blockwise.run_block(fp_block, xf, kw)
                blockwise.run_block(block, xq, kw)
        config = self.qep_config
        for layer_name, module in group.items():
            hessian, cross = collector.stats[layer_name].matrices()
            if config.perccorr > 0 and config.corrects(layer_name):
                module.weight.data = correct_weight(
                    module.weight.data, hessian, cross, config.perccorr, config.percdamp
                )
            if self.quantizer.statistics == "diag":
                hessian = hessian.diagonal().clone()
            self._quantize_one(layer_name, hessian)

    def _quantize_one(self, name: str, hessian: torch.Tensor | None) -> None:
        module = self.layers[name]
        result = self.quantizer.quantize(module, name, hessian=hessian)
        if self._layer_bar is not None:
            self._layer_bar.set_postfix_str(name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1])
            self._layer_bar.update(1)
        if result.fallback:
            logger.warning("%s: %s", name, result.fallback)
        weight = module.weight
        weight.data = result.compute_dequantized_weight(weight.device).to(weight.dtype)

    # -- layers outside the blocks (lm_head when selected) -----------------------------
    def _quantize_outside_blocks(self, prefix: str, device: torch.device) -> None:
        outside = {n: m for n, m in self.layers.items() if not n.startswith(prefix + ".")}
        if not outside:
            return
        kind = self.quantizer.statistics if self._needs_data else "none"
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(outside)
        if kind != "none":
            collector = StatisticsCollector(outside, kind, self.quantizer.hessian_dtype)
            self.model.to(device)
            with torch.no_grad(), collector.hooked():
                for ids, mask in self._batches():
                    collector.token_mask = self._token_mask(mask)
                    self.model(
                        input_ids=ids.to(device),
                        attention_mask=None if mask is None else mask.to(device),
                    )
            self.model.to("cpu")
            hessians = collector.hessians()
        for name in outside:
            self._quantize_one(name, hessians[name])

    # -- reporting ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """JSON-ready per-layer table and totals."""
        rows = []
        for name, result in self.quantizer.results.items():
            module = self.layers.get(name)
            out_f, in_f = module.weight.shape if module is not None else (None, None)
            row = {
                "layer": name,
                "method": getattr(result, "_method", self.quantizer.method),
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
        }

    def print_quantization_results(self) -> None:
        from .report import format_table

        print(format_table(self.summary()["layers"]))

    def save_summary(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.summary(), indent=1))

    # -- outputs (see serialization.py) --------------------------------------------------
    def _require_run(self) -> None:
        if not self.quantized:
            raise RuntimeError("call Runner.run() first")

    def create_quantized_model(self) -> nn.Module:
        """A model with packed inference layers (``self.model`` stays fake-quantized)."""
        from .serialization import packed_model

        self._require_run()
        return packed_model(self.model, self.quantizer, bool(self.conv1d_linearized))

    def save_quantized_model(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        from .serialization import save_quantized_model

        self._require_run()
        return save_quantized_model(self, out_dir, overwrite=overwrite)

    def save_dequantized_model(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        from .serialization import save_dequantized_model

        self._require_run()
        return save_dequantized_model(self, out_dir, overwrite=overwrite)

    def save_quantization_results(self, path: str | Path) -> None:
        self._require_run()
        self.quantizer.save_results(path)

    def calculate_perplexity(
        self, text_or_path: str | Path, model: str = "dequantized", **kwargs: Any
    ):
        """Perplexity of the "dequantized" model in memory, the packed "quantized" one, or the
        "original" (reloaded from its source)."""
        from .evaluation import calculate_perplexity

        self._require_run()
        return calculate_perplexity(self._model_for(model), self.tokenizer, text_or_path, **kwargs)

    def _model_for(self, which: str) -> nn.Module:
        if which == "dequantized":
            return self.model
        if which == "quantized":
            return self.create_quantized_model()
        if which == "original":
            return self.model_config.load_model()
        raise ValueError(f"model={which!r}: expected 'dequantized', 'quantized' or 'original'")

    def calculate_accuracy(self, jsonl_path: str | Path, **kwargs: Any):
        from .evaluation import calculate_accuracy

        self._require_run()
        which = kwargs.pop("model", "dequantized")
        return calculate_accuracy(self._model_for(which), self.tokenizer, jsonl_path, **kwargs)
