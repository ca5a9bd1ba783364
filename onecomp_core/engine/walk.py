"""The engine: it owns a run — selection, statistics, the block walk, results, write-back.

Each repeated block in turn moves to the compute device; forward hooks
accumulate the statistics the method's :class:`~onecomp_core.contract.Needs`
ask for over all calibration batches; each selected layer is quantized and its
dequantized weight written back (:meth:`Engine._store`, the one write-back),
so later layers see quantized inputs; the block runs once more to produce the
next block's inputs and moves back. Results live in one place,
:attr:`Engine.results`; methods return results and never mutate shared state.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..contract import BlockView, LayerJob, LayerMoments, LayerResult, Method, Needs, RunView
from ..contract.selection import select_layers
from ..storage.packed import apply_results
from . import blocks as blockwise
from . import quant_error
from .checkpoint import BlockCheckpoint
from .distributed import Ranks
from .gradients import collect_moments, limit_batches
from .qep import PairedCollector, QEPConfig, correct_weight
from .statistics import StatisticsCollector

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class Streams:
    """Calibration activations entering the current block."""

    quantized: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    token_masks: list[torch.Tensor | None]
    full_precision: list[torch.Tensor] | None = None


def choose_layers(model: nn.Module, method: Method) -> dict[str, nn.Module]:
    """Validate (every problem in one error), select by the rules, let the method narrow."""
    method.validate()
    return method.choose_layers(select_layers(model, method.selection_rules()))


class Engine:
    """Quantizes ``layers`` of ``model`` with ``method``, block by block (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        layers: dict[str, nn.Module],
        batches: list[Batch],
        device: torch.device,
        *,
        checkpoint: Callable[[], BlockCheckpoint | None] | None = None,
        qep: QEPConfig | None = None,
        show_progress: bool = False,
        block_callback: Callable[[BlockView], None] | None = None,
    ) -> None:
        self.model, self.method, self.layers = model, method, layers
        self.batches, self.device, self.qep = batches, device, qep
        self._checkpoint_factory = checkpoint
        self.show_progress, self.block_callback = show_progress, block_callback
        self.results: dict[str, LayerResult] = {}
        self.needs: Needs = method.needs()
        self.moments: dict[str, LayerMoments] | None = None
        self._layer_bar = None
        #: this process's place in a torch.distributed run (one process: rank 0 of 1)
        self.ranks = Ranks.current()
        #: seconds per phase: capture_s + forward_s is one calibration forward of the model
        self.timings: dict[str, float] = {}

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, LayerResult]:
        """Quantize every selected layer; returns :attr:`results`."""
        with self._timed("moments_s"):
            self.moments = self._moments()
        self.method.prepare(RunView(self.model, self.layers, self.batches, {}, self.moments))
        self.needs = self.method.needs()
        self.ranks.check_same("the method's settings after prepare", self.method.to_dict())
        keep_fp = self.needs.fp_stream or self.qep is not None
        self._needs_data = bool(self.batches) and (self.needs.inputs != "none" or keep_fp)
        self._keep_fp = keep_fp
        prefix, blocks = blockwise.find_blocks(self.model)
        checkpoint = self._checkpoint_factory() if self._checkpoint_factory else None
        start = checkpoint.finished_blocks() if checkpoint else 0
        start = self.ranks.check_same("blocks done in --checkpoint-dir (on all nodes?)", start)
        streams = self._start_streams(blocks, checkpoint, start)
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
            initial=len(self.results),
            leave=False,
            disable=not self.show_progress,
        )
        try:
            for index in range(start, len(blocks)):
                streams = self._block(
                    index, f"{prefix}.{index}", blocks[index], streams, checkpoint
                )
                bar.update(1)
            if not self.ranks.is_writer:
                return self.results  # the model-level steps run on rank 0 alone
            self._outside_blocks(prefix)
            view = RunView(self.model, self.layers, self._data_batches(), dict(self.results))
            with self._timed("model_hooks_s"):
                self._update(self.method.on_model_done(view))
        finally:
            self._layer_bar.close()
            bar.close()
        return self.results

    def _data_batches(self) -> list[Batch]:
        """The batches a model-level step gets: none when the method asked for no data."""
        return self.batches if (self._needs_data or self.needs.model_pass) else []

    def _moments(self) -> dict[str, LayerMoments] | None:
        """Output-gradient moments before ``prepare``, when the method asks for them."""
        spec = self.needs.moments
        if spec is None:
            return None
        if not self.batches:
            logger.warning("no calibration batches: output-gradient moments are not collected")
            return None
        used = limit_batches(self.batches, spec.max_sequences, spec.max_tokens)
        return collect_moments(
            self.model,
            self.layers,
            used,
            gradients=spec.gradients,
            full=spec.full,
            fisher_labels=spec.labels,
            samples=spec.samples,
            seed=spec.seed,
        )

    # -- results: the one place they are stored and written back ------------------------------
    def _store(self, name: str, result: LayerResult) -> None:
        self.results[name] = result
        apply_results(self.layers, {name: result})

    def _update(self, changed: dict[str, LayerResult] | None) -> None:
        for name, result in (changed or {}).items():
            if name not in self.layers:
                raise RuntimeError(f"method {self.method.method!r} returned unknown layer {name!r}")
            self._store(name, result)

    # -- streams and resume ----------------------------------------------------------------------
    def _start_streams(
        self, blocks: nn.ModuleList, checkpoint: BlockCheckpoint | None, start: int
    ) -> Streams | None:
        if start:
            self._restore(blocks, checkpoint, start)
        if not self._needs_data:
            return None
        local = self.ranks.share_of_batches(self.batches)  # the batches this rank streams
        self._outer_to(blocks, self.device)
        with self._timed("capture_s"):
            inputs, kwargs = blockwise.capture_inputs(self.model, blocks[0], local, self.device)
        self._outer_to(blocks, torch.device("cpu"))
        masks = [self._token_mask(mask) for _, mask in local]
        fp = [x.clone() for x in inputs] if self._keep_fp else None
        if start:
            saved = self.ranks.shard_streams(checkpoint.load_streams(start, self.device))
            inputs, fp = saved["quantized"], saved.get("full_precision")
        return Streams(inputs, kwargs, masks, fp)

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

    def _restore(self, blocks: nn.ModuleList, checkpoint: BlockCheckpoint, start: int) -> None:
        for name, result in checkpoint.load_results(start).items():
            self._store(name, result)
        for index in range(start):
            rest = checkpoint.load_rest(index)
            if rest:
                blocks[index].load_state_dict(rest, strict=False)
        logger.info("resumed after block %d of %d", start, len(blocks))

    # -- one block ----------------------------------------------------------------------------------
    def _block(
        self,
        index: int,
        name: str,
        block: nn.Module,
        streams: Streams | None,
        checkpoint: BlockCheckpoint | None,
    ) -> Streams | None:
        layers = {n: m for n, m in self.layers.items() if n.startswith(name + ".")}
        block.to(self.device)
        fp_block = copy.deepcopy(block) if self.qep is not None else None
        with torch.no_grad(), self._timed("fp_forward_s"):
            fp_out = (
                self._run_all(block, streams.full_precision, streams)
                if (streams and streams.full_precision is not None)
                else None
            )
        if streams is None:
            self._solve(layers, dict.fromkeys(layers))
        else:
            for group in self._groups(block, layers, streams):
                group_layers = {n: layers[n] for n in group}
                if fp_block is not None:
                    self._group_qep(block, fp_block, name, group_layers, streams)
                else:
                    self._group(block, group_layers, streams)
        del fp_block
        view = BlockView(
            index=index,
            name=name,
            block=block,
            device=self.device,
            inputs=streams.quantized if streams else [],
            kwargs=streams.kwargs if streams else [],
            layers=layers,
            results={n: self.results[n] for n in layers},
            fp_inputs=streams.full_precision if streams else None,
            fp_outputs=fp_out,
        )
        with self._timed("block_hooks_s"):
            self._update(self.ranks.block_hook(self.method, view))
        view = dataclasses.replace(view, results={n: self.results[n] for n in layers})
        if streams is not None:
            with torch.no_grad(), self._timed("forward_s"):
                outputs = self._run_all(block, streams.quantized, streams)
            streams = Streams(outputs, streams.kwargs, streams.token_masks, fp_out)
        block.to("cpu")
        if checkpoint is not None:
            saved = {"quantized": streams.quantized} if streams else {}
            if streams and streams.full_precision is not None:
                saved["full_precision"] = streams.full_precision
            saved = {k: self.ranks.gather(v, to_all=False) for k, v in saved.items()}
            if self.ranks.is_writer:
                checkpoint.save_block(
                    index, view.results, saved, blockwise.other_tensors(block, layers)
                )
        if self.block_callback is not None:
            self.block_callback(view)
        return streams

    def _run_all(self, block: nn.Module, inputs: list[torch.Tensor], streams: Streams):
        return [
            blockwise.run_block(block, x, kw) for x, kw in zip(inputs, streams.kwargs, strict=True)
        ]

    def _groups(
        self, block: nn.Module, layers: dict[str, nn.Module], streams: Streams
    ) -> list[list[str]]:
        if not layers:
            return []
        if not self.needs.sequential:
            return [list(layers)]
        return blockwise.sequential_groups(block, layers, streams.quantized[0], streams.kwargs[0])

    def _group(self, block: nn.Module, group: dict[str, nn.Module], streams: Streams) -> None:
        """Statistics of one sub-group (each pass stops at its last layer), then its solves."""
        kind = self.needs.inputs
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(group)
        if kind != "none":
            collector = StatisticsCollector(group, kind, self.needs.precision)
            stop = blockwise.StopAfter(list(group.values()))
            with self._timed("statistics_s"), torch.no_grad(), collector.hooked(), stop:
                for x, kw, mask in zip(
                    streams.quantized, streams.kwargs, streams.token_masks, strict=True
                ):
                    collector.new_batch(mask)
                    stop.run(block, x, kw, only=collector.owners())
            self.ranks.sum_statistics(collector.stats)
            hessians = collector.hessians()
        self._solve(group, hessians)

    def _group_qep(
        self,
        block: nn.Module,
        fp_block: nn.Module,
        block_name: str,
        group: dict[str, nn.Module],
        streams: Streams,
    ) -> None:
        """Pair each layer's full-precision and quantized-stream inputs, correct, quantize."""
        fp_group = {n: fp_block.get_submodule(n[len(block_name) + 1 :]) for n in group}
        collector = PairedCollector(fp_group, group, self.needs.precision)
        stop_fp = blockwise.StopAfter(list(fp_group.values()))
        stop_q = blockwise.StopAfter(list(group.values()))
        with self._timed("statistics_s"), torch.no_grad(), collector.hooked(), stop_fp, stop_q:
            for xq, xf, kw, mask in zip(
                streams.quantized,
                streams.full_precision,
                streams.kwargs,
                streams.token_masks,
                strict=True,
            ):
                collector.token_mask = mask
                stop_fp.run(fp_block, xf, kw)
                stop_q.run(block, xq, kw)
        self.ranks.sum_statistics(collector.stats)
        config = self.qep
        done: dict[str, LayerResult] = {}
        for layer_name, module in self.ranks.mine(group).items():
            hessian, cross = collector.stats[layer_name].matrices()
            if config.perccorr > 0 and config.corrects(layer_name):
                module.weight.data = correct_weight(
                    module.weight.data, hessian, cross, config.perccorr, config.percdamp
                )
            if self.needs.inputs == "diag":
                hessian = hessian.diagonal().clone()
            done[layer_name] = self._compute(layer_name, hessian)
        self._accept(self.ranks.exchange(group, done))

    def _solve(self, group: dict[str, nn.Module], hessians: dict[str, torch.Tensor | None]) -> None:
        """Quantize ``group``: each rank its share, every result stored on every rank."""
        done = {n: self._compute(n, hessians[n]) for n in self.ranks.mine(group)}
        self._accept(self.ranks.exchange(group, done))

    def _compute(self, name: str, hessian: torch.Tensor | None) -> LayerResult:
        module = self.layers[name]
        moments = (self.moments or {}).get(name)
        gradients = moments.b if moments is not None else None
        with self._timed("solve_s"):
            result = self.method.quantize(
                LayerJob(name, module, hessian=hessian, gradients=gradients)
            )
        if self.method.calc_quant_error:
            quant_error.fill_errors(result, module.weight.data, hessian)
        return result

    def _accept(self, results: dict[str, LayerResult]) -> None:
        for name, result in results.items():
            if self._layer_bar is not None:
                self._layer_bar.set_postfix_str(".".join(name.rsplit(".", 2)[-2:]))
                self._layer_bar.update(1)
            if result.fallback:
                logger.warning("%s: %s", name, result.fallback)
            self._store(name, result)

    # -- layers outside the blocks (lm_head when selected) ---------------------------------------
    def _outside_blocks(self, prefix: str) -> None:
        outside = {n: m for n, m in self.layers.items() if not n.startswith(prefix + ".")}
        if not outside:
            return
        kind = self.needs.inputs if self._needs_data else "none"
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(outside)
        if kind != "none":
            collector = StatisticsCollector(outside, kind, self.needs.precision)
            self.model.to(self.device)
            with torch.no_grad(), collector.hooked():
                for ids, mask in self.batches:
                    collector.new_batch(self._token_mask(mask))
                    self.model(
                        input_ids=ids.to(self.device),
                        attention_mask=None if mask is None else mask.to(self.device),
                    )
            self.model.to("cpu")
            hessians = collector.hessians()
        self._accept({name: self._compute(name, hessians[name]) for name in outside})
