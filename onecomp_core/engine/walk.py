"""The engine: it owns a run — selection, statistics, the block walk, results, write-back.

Each repeated block in turn moves to the compute device; forward hooks accumulate the statistics
the method's :class:`~onecomp_core.contract.Needs` ask for over all calibration batches; each
selected layer is quantized and its dequantized weight written back once its sub-group is
solved (:func:`apply_results`), so later groups see quantized inputs; the block runs once more
for the next block's inputs and moves back. Results live in :attr:`Engine.results` alone.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..contract import BlockView, LayerMoments, LayerResult, Method, Needs, RunView
from ..contract.selection import select_layers
from ..data.streamed import ResidentModel
from ..storage.packed import apply_results, release_weights
from . import blocks as blockwise
from . import offload as disk
from . import quant_error
from .checkpoint import BlockCheckpoint
from .distributed import Ranks
from .finetune import finetune_block
from .gradients import moments_for
from .heap import trim_heap
from .model_walk import Walk
from .qep import QEPConfig, corrected_hessians, paired_statistics
from .shared_solves import job_of, solve_jobs
from .shared_statistics import Recording
from .statistics import StatisticsCollector, model_statistics, token_mask
from .timings import Timings

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]


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
        source: Any = None,
        writer: Any = None,
        offload: disk.DiskStreams | None = None,
    ) -> None:
        self.model, self.method, self.layers = model, method, layers
        # block tensors from memory or disk; finished blocks to a ShardWriter; activations on disk
        self.source = source if source is not None else ResidentModel(model)
        self.writer, self.offload = writer, offload
        self.batches, self.device, self.qep = batches, device, qep
        self._checkpoint_factory = checkpoint
        self.show_progress, self.block_callback = show_progress, block_callback
        self.results: dict[str, LayerResult] = {}
        self.needs: Needs = method.needs()
        self.moments: dict[str, LayerMoments] | None = None
        self._layer_bar = None
        self._parked = disk.ParkedResults()  # finished blocks' results, for a model pass
        #: this process's place in a torch.distributed run (one process: rank 0 of 1)
        self.ranks = Ranks.current()
        #: seconds per phase: capture_s + forward_s is one calibration forward of the model
        self.timings = Timings(after_each=trim_heap)  # each phase's freed fragments go back

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, LayerResult]:
        """Quantize every selected layer; returns :attr:`results`."""
        with self.timings.timed("moments_s"):
            self.moments = self._moments()
        # model-level steps go through the blocks; a streamed block is refilled with the results
        walk = Walk(self.model, self.device, self.source, fill=self._fill_block)
        self.method.prepare(RunView(self.model, self.layers, self.batches, {}, self.moments, walk))
        self.needs = self.method.needs()
        self.ranks.check_same("the method's settings after prepare", self.method.to_dict())
        keep_fp = self.needs.fp_stream or self.qep is not None
        self._needs_data = bool(self.batches) and (self.needs.inputs != "none" or keep_fp)
        self._keep_fp = keep_fp
        if self.writer is not None and self.needs.model_pass:
            self.writer.keep_results = True  # on_model_done reads (and may change) every result
        prefix, blocks = blockwise.find_blocks(self.model)
        checkpoint = self._checkpoint_factory() if self._checkpoint_factory else None
        start = checkpoint.finished_blocks() if checkpoint else 0
        start = self.ranks.check_same("blocks done in --checkpoint-dir (on all nodes?)", start)
        streams = self._start_streams(prefix, blocks, checkpoint, start)
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
                name = f"{prefix}.{index}"
                streams = self._block(index, name, blocks[index], streams, checkpoint)
                bar.update(1)
                if self.device.type == "cuda":  # a run stopped early still shows its peak
                    peak = torch.cuda.max_memory_allocated(self.device) / 2**20
                    bar.set_postfix_str(f"GPU peak {peak:.0f} MiB")
            del streams  # the last block's outputs feed nothing (a teacher keeps its own)
            self._parked.revive(self.results)
            self._outside_blocks(prefix)
            if not self.ranks.is_writer:
                return self.results  # the model-level step runs on rank 0 alone
            view = RunView(self.model, self.layers, self._data_batches(), dict(self.results))
            with self.timings.timed("model_hooks_s"):
                changed = self.method.on_model_done(dataclasses.replace(view, walk=walk))
                self._update(changed)
                if self.writer is not None and changed:  # shards written before the step
                    self.writer.rewrite_blocks(
                        changed, self.layers, self.results, self.method, self._fill_block
                    )
        finally:
            walk.close()
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
        return moments_for(self.model, self.layers, self.batches, spec, self.device, self.source)

    # -- results: the one place they are stored and written back ------------------------------
    def _store(self, name: str, result: LayerResult, write: bool = True) -> None:
        self.results[name] = result
        if write:  # else the caller writes it back (a group's solves: after the last)
            apply_results(self.layers, {name: result})

    def _update(self, changed: dict[str, LayerResult] | None, write: bool = True) -> None:
        for name, result in (changed or {}).items():
            if name not in self.layers:
                raise RuntimeError(f"method {self.method.method!r} returned unknown layer {name!r}")
            self._store(name, result, write)

    def _block_layers(self, block_name: str) -> dict[str, nn.Module]:
        return {n: m for n, m in self.layers.items() if n.startswith(block_name + ".")}

    def _fill_block(self, block_name: str, block: nn.Module, skip: Collection[str] = ()) -> None:
        """Write the results of a streamed block's layers into it (just read from disk), but
        not into the ``skip`` layers (swapped out by the caller, left unread)."""
        layers = {n: m for n, m in self._block_layers(block_name).items() if n not in skip}
        apply_results(layers, {n: self.results[n] for n in layers if n in self.results})

    # -- streams and resume ----------------------------------------------------------------------
    def _start_streams(
        self, prefix: str, blocks: nn.ModuleList, checkpoint: BlockCheckpoint | None, start: int
    ) -> disk.Streams | None:
        if start:
            self._restore(blocks, checkpoint, start)
        if not self._needs_data:
            return None
        local = self.ranks.share_of_batches(self.batches)  # the batches this rank streams
        with self.source.outside(prefix, self.device), self.timings.timed("capture_s"):
            inputs, kwargs = blockwise.capture_inputs(self.model, blocks[0], local, self.device)
        inputs = self._keep(inputs)
        masks = [token_mask(mask) for _, mask in local]
        fp = self._keep(x.clone() for x in inputs) if self._keep_fp else None
        if start:
            saved = self.ranks.shard_streams(checkpoint.load_streams(start, self.device))
            inputs = self._keep(saved["quantized"])
            fp = self._keep(saved["full_precision"]) if "full_precision" in saved else None
        return disk.Streams(inputs, kwargs, masks, fp)

    def _keep(self, tensors) -> list[torch.Tensor]:
        """A stream of activations: a list, or files on disk with ``--offload-activations``."""
        return self.offload.stream(tensors) if self.offload is not None else list(tensors)

    def _restore(self, blocks: nn.ModuleList, checkpoint: BlockCheckpoint, start: int) -> None:
        for name, result in checkpoint.load_results(start).items():
            light = self.writer is not None and not self.needs.model_pass
            self._store(name, disk.light_result(result) if light else result)
        if self.writer is not None and self.writer.keep_results:  # as if walked this run
            self._parked.park(self.results, list(self.results))
        for index in range(start):
            rest = checkpoint.load_rest(index)
            if rest and not self.source.streamed:  # a streamed block's rest is in its shard
                blocks[index].load_state_dict(rest, strict=False)
        logger.info("resumed after block %d of %d", start, len(blocks))

    # -- one block ----------------------------------------------------------------------------------
    def _block(
        self,
        index: int,
        name: str,
        block: nn.Module,
        streams: disk.Streams | None,
        checkpoint: BlockCheckpoint | None,
    ) -> disk.Streams | None:
        layers, block = self._block_layers(name), self.source.materialize(name, self.device)
        fp_block = copy.deepcopy(block) if self.qep is not None else None
        has_fp = streams is not None and streams.full_precision is not None
        # each stream waits on disk while the other runs through the block (the same bytes back)
        waits = streams.quantized if has_fp else None
        with torch.no_grad(), self.timings.timed("fp_forward_s"), disk.set_aside(waits):
            fp_out = self._run_all(block, streams.full_precision, streams) if has_fp else None
        if streams is not None and fp_block is None:  # dead once fp_out exists (not for QEP)
            streams.full_precision = None
        if streams is None:
            self._solve(layers, dict.fromkeys(layers))
        else:  # the fp outputs wait on disk until fine-tuning reads them
            with disk.set_aside(fp_out):
                for group in self._groups(block, layers, streams):
                    group_layers = {n: layers[n] for n in group}
                    rest = [m for n, m in layers.items() if n not in group_layers]
                    if fp_block is not None:
                        self._group_qep(block, fp_block, name, group_layers, streams, rest)
                    else:
                        self._group(block, group_layers, streams, rest)
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
            fp_outputs=fp_out,
        )
        whole = self.ranks.for_hooks(view, self.method, self.needs.fine_tunes)
        if self.needs.fine_tunes and streams is not None:  # engine block fine-tuning
            with self.timings.timed("finetune_s"):
                tuned = finetune_block(self.method, whole, self.needs.finetune)[0]
                kept = self.ranks.from_writer(tuned)  # the block holds ``tuned``'s weights:
                self._update(kept, write=kept is not tuned)  # written only if rank 0's differ
            view = dataclasses.replace(view, results={n: self.results[n] for n in layers})
            whole = dataclasses.replace(whole, results=view.results)
        with self.timings.timed("block_hooks_s"):
            self._update(self.ranks.from_writer(self.method.on_block_done(whole)))
        view = dataclasses.replace(view, results={n: self.results[n] for n in layers})
        if streams is not None:
            with torch.no_grad(), self.timings.timed("forward_s"), disk.set_aside(fp_out):
                outputs = self._run_all(block, streams.quantized, streams)
            streams = disk.Streams(outputs, streams.kwargs, streams.token_masks, fp_out)
        if self.writer is not None:  # before the checkpoint: a finished block has its shard
            self.writer.write_block(index, block, layers, view.results, self.method)
        if checkpoint is not None:
            saved = {"quantized": streams.quantized} if streams else {}
            if streams and streams.full_precision is not None:
                saved["full_precision"] = streams.full_precision
            saved = {k: self.ranks.gather(v, to_all=False) for k, v in saved.items()}
            if self.ranks.is_writer:
                rest = blockwise.other_tensors(block, layers)
                checkpoint.save_block(index, view.results, saved, rest)
        self.source.release(name)
        trim_heap()  # the block's freed fragments back to the system (else the peak creeps up)
        if self.block_callback is not None:
            self.block_callback(view)
        if self.writer is not None and self.writer.keep_results:  # on disk until the model step
            self._parked.park(self.results, layers)
        return streams

    def _run_all(self, block: nn.Module, inputs: list[torch.Tensor], streams: disk.Streams):
        return self._keep(
            blockwise.run_block(block, x, kw) for x, kw in zip(inputs, streams.kwargs, strict=True)
        )

    def _groups(
        self, block: nn.Module, layers: dict[str, nn.Module], streams: disk.Streams
    ) -> list[list[str]]:
        if not (layers and self.needs.sequential):
            return [list(layers)] if layers else []
        return blockwise.sequential_groups(block, layers, streams.quantized[0], streams.kwargs[0])

    def _group(self, block: nn.Module, group: dict, streams: disk.Streams, rest: list) -> None:
        """Statistics of one sub-group (each pass stops at its last layer; the block's inputs
        read back from disk a batch at a time), then its solves (the inputs and ``rest``
        layers' weights set aside: no solve reads them)."""
        kind = self.needs.inputs
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(group)
        with disk.read_in_turn(streams.quantized) as inputs:
            if kind != "none":
                collector = StatisticsCollector(group, kind, self.needs.precision)
                record = Recording.of(self.ranks, len(self.batches), collector)
                stop = blockwise.StopAfter(list(group.values()))
                unused = disk.weights_until_used([*group.values(), *rest])  # after ``stop``
                timed = self.timings.timed("statistics_s")
                with timed, torch.no_grad(), collector.hooked(), stop, unused:
                    for i, mask in enumerate(streams.token_masks):  # one batch held at a time
                        if record is not None:
                            record.batch(i)
                        collector.new_batch(mask)
                        stop.run(block, inputs[i], streams.kwargs[i], only=collector.owners())
                    if record is not None:
                        record.finish_collector(collector)
                hessians = collector.hessians()
            with disk.weights_aside(rest):
                self._solve(group, hessians)

    def _group_qep(
        self,
        block: nn.Module,
        fp_block: nn.Module,
        block_name: str,
        group: dict[str, nn.Module],
        streams: disk.Streams,
        rest: list[nn.Module],
    ) -> None:
        """Pair each layer's full-precision and quantized-stream inputs, correct, quantize."""
        fp_group = {n: fp_block.get_submodule(n[len(block_name) + 1 :]) for n in group}
        record = Recording.of(self.ranks, len(self.batches))
        with self.timings.timed("statistics_s"):
            paired = paired_statistics(
                block, fp_block, fp_group, group, streams, self.needs, record and record.on_batch
            )
            if record is not None:
                paired.stats = record.finish(paired.stats)
        diag = self.needs.inputs == "diag"
        with disk.weights_aside(rest):
            self._solve(group, corrected_hessians(group, paired.stats, self.qep, diag))

    def _solve(self, group: dict[str, nn.Module], hessians: dict[str, torch.Tensor | None]) -> None:
        """Quantize ``group`` (under torchrun each rank its share) and store every result."""
        if self.ranks.distributed:
            jobs = {n: job_of(n, self.layers, hessians.pop(n), self.moments) for n in group}
            with self.timings.timed("solve_s"):
                results = solve_jobs(self.ranks, self.method, jobs)
            for name, result in results.items():
                self._accept(name, result, jobs[name].hessian)
            return
        hand_over = not self.method.calc_quant_error  # the solve may free H (LayerJob)
        with disk.solved_in_turn(self.layers, hessians, list(group)) as ready:  # the rest on disk
            for name in group:  # popped: a solved layer's H is freed before the next solve
                ready(name)
                job = job_of(name, self.layers, hessians.pop(name), self.moments, hand_over)
                with self.timings.timed("solve_s"):
                    result = self.method.quantize(job)
                self._accept(name, result, job.hessian, write=False)
                release_weights(self.layers, [name])  # dead until the group's write-back
        apply_results(self.layers, {n: self.results[n] for n in group})

    def _accept(
        self, name: str, result: LayerResult, hessian: torch.Tensor | None, write: bool = True
    ) -> None:
        if self.method.calc_quant_error:
            quant_error.fill_errors(result, self.layers[name].weight.data, hessian)
        if self._layer_bar is not None:
            self._layer_bar.set_postfix_str(".".join(name.rsplit(".", 2)[-2:]))
            self._layer_bar.update(1)
        if result.fallback:
            logger.warning("%s: %s", name, result.fallback)
        self._store(name, result, write)

    # -- layers outside the blocks (lm_head when selected) ---------------------------------------
    def _outside_blocks(self, prefix: str) -> None:
        outside = {n: m for n, m in self.layers.items() if not n.startswith(prefix + ".")}
        if not outside:
            return
        kind = self.needs.inputs if self._needs_data else "none"
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(outside)
        if kind != "none":
            hessians = model_statistics(
                self.model, outside, self.batches, kind, self.needs.precision, self.device
            )
        self._solve(outside, hessians)
