"""The ranks of a torch.distributed run, as the block walk uses them.

When a process group is up (``torchrun`` and :mod:`onecomp_core.engine.launch`,
or a user's own ``init_process_group``), the walk splits its work:

- calibration batches are sharded: rank r runs the block forwards of a
  contiguous share of the batches (its streams never leave it);
- input statistics (XᵀX, its diagonal, QEP's paired matrices, token
  counts) are all-reduced. They are accumulated per batch and summed in
  float64 (:mod:`~onecomp_core.engine.statistics`), which makes the sum
  exact, so its order — which rank holds which batch — cannot change a bit;
- the layers of a sub-group are assigned to ranks by solve cost (longest
  job first); each rank solves its layers and the packed results are
  exchanged, so every rank writes back the same dequantized weights;
- a block hook (``on_block_done``) sees every batch: the block's streams
  are gathered to every rank, each runs the hook, rank 0's results win;
- rank 0 writes checkpoints (streams gathered to it) and the output.

One process is the same object with ``world == 1``: every call returns its
input and no collective runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ..contract import BlockView, LayerResult, Method

T = TypeVar("T")


def shard_range(count: int, world: int, rank: int) -> range:
    """The contiguous share of ``count`` items of ``rank`` (sizes differ by at most one)."""
    return range(rank * count // world, (rank + 1) * count // world)


def solve_cost(module: nn.Module) -> float:
    """Relative cost of solving one (out × in) layer: in²·(in + out), as GPTQ's inverse + updates."""
    out_features, in_features = module.weight.shape[:2]
    return float(in_features) ** 2 * (in_features + out_features)


def assign_layers(costs: dict[str, float], world: int) -> dict[str, int]:
    """Layer → rank by longest-processing-time-first: the costliest layer goes to the rank with
    the least work so far (ties: the first layer, the lowest rank), so the result is the same on
    every rank."""
    load = [0.0] * world
    owners: dict[str, int] = {}
    order = sorted(enumerate(costs.items()), key=lambda item: (-item[1][1], item[0]))
    for _, (name, cost) in order:
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[name] = rank
        load[rank] += cost
    return {name: owners[name] for name in costs}


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (``world == 1``: one process, no collectives)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """The ranks of the initialised default process group, else one process."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the output, the checkpoints, and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank got here (nothing in one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    # -- batches ------------------------------------------------------------------------------
    def check_batches(self, count: int) -> None:
        """Every rank needs at least one calibration batch."""
        if self.distributed and count < self.world:
            raise ValueError(
                f"{count} calibration batch(es) for {self.world} processes: every process needs "
                "at least one (raise --num-samples or lower --batch-size)"
            )

    def share_of_batches(self, batches: Sequence[T]) -> list[T]:
        """This rank's calibration batches (an error when some rank would get none)."""
        self.check_batches(len(batches))
        return self.shard(batches)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (all of them in one process)."""
        return list(items[i] for i in shard_range(len(items), self.world, self.rank))

    def shard_streams(self, streams: dict[str, list[T]]) -> dict[str, list[T]]:
        """This rank's share of every per-batch list of ``streams``."""
        return {name: self.shard(items) for name, items in streams.items()}

    def gather(self, items: list[Any], to_all: bool = True) -> list[Any] | None:
        """Every rank's share of a per-batch list, concatenated in batch order.

        With ``to_all=False`` only rank 0 receives it (others get None).
        Tensors travel through the CPU (a pickled CUDA tensor would land on the
        sender's device) and come back on the device they left from.
        """
        if not self.distributed:
            return items
        import torch.distributed as dist

        device = _device_of(items)
        local = _to(items, torch.device("cpu"))
        if to_all:
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, local)
        else:
            parts = [None] * self.world if self.is_writer else None
            dist.gather_object(local, parts, dst=0)
            if not self.is_writer:
                return None
        return [_to(item, device) for part in parts for item in part]

    def whole(self, view: BlockView, method: Method) -> BlockView:
        """``view`` with every rank's batches, for a method that has a block hook to run."""
        if not self.distributed or type(method).on_block_done is Method.on_block_done:
            return view
        fp_in, fp_out = view.fp_inputs, view.fp_outputs
        return dataclasses.replace(
            view,
            inputs=self.gather(view.inputs),
            kwargs=self.gather(view.kwargs),
            fp_inputs=None if fp_in is None else self.gather(fp_in),
            fp_outputs=None if fp_out is None else self.gather(fp_out),
        )

    def block_hook(self, method: Method, view: BlockView) -> dict[str, LayerResult]:
        """What ``method.on_block_done`` returns for the block of all ranks' batches (rank 0's
        results, on every rank)."""
        return self.from_writer(method.on_block_done(self.whole(view, method)))

    # -- statistics ---------------------------------------------------------------------------
    def sum_statistics(self, stats: dict[str, Any]) -> None:
        """All-reduce (sum) every accumulator and token count of ``stats`` in place.

        ``stats`` maps names to objects with ``accumulators()`` (tensors) and
        ``tokens`` (int). The sums are exact (float64 of float32 products), so
        every rank, and one process, ends with the same bits.
        """
        if not self.distributed:
            return
        import torch.distributed as dist

        names = sorted(stats)
        for name in names:
            for tensor in stats[name].accumulators():
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        device = next(iter(stats[names[0]].accumulators())).device if names else None
        tokens = torch.tensor([stats[n].tokens for n in names], dtype=torch.int64, device=device)
        dist.all_reduce(tokens, op=dist.ReduceOp.SUM)
        for name, count in zip(names, tokens.tolist(), strict=True):
            stats[name].tokens = int(count)

    # -- layer solves -------------------------------------------------------------------------
    def owners(self, layers: dict[str, nn.Module]) -> dict[str, int]:
        """Which rank solves each of ``layers`` (rank 0 for all in one process)."""
        if not self.distributed:
            return dict.fromkeys(layers, 0)
        return assign_layers({n: solve_cost(m) for n, m in layers.items()}, self.world)

    def mine(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The ``layers`` this rank solves, in their order."""
        owners = self.owners(layers)
        return {name: m for name, m in layers.items() if owners[name] == self.rank}

    def exchange(
        self, names: Iterable[str], local: dict[str, LayerResult]
    ) -> dict[str, LayerResult]:
        """Every rank's results for ``names``, in that order (each rank passes its own)."""
        names = list(names)
        if not self.distributed:
            return {n: local[n] for n in names}
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, {n: _pack(r) for n, r in local.items()})
        merged = {n: r for part in parts for n, r in part.items()}
        return {n: local[n] if n in local else _unpack(merged[n]) for n in names}

    def from_writer(self, results: dict[str, LayerResult]) -> dict[str, LayerResult]:
        """Rank 0's ``results`` on every rank (what a hook every rank ran returned on rank 0)."""
        if not self.distributed:
            return results
        import torch.distributed as dist

        box = [{n: _pack(r) for n, r in results.items()} if self.is_writer else None]
        dist.broadcast_object_list(box, src=0)
        return results if self.is_writer else {n: _unpack(s) for n, s in box[0].items()}

    def check_same(self, what: str, value: T) -> T:
        """``value`` (JSON-able); fails on every rank when it is not the same on all ranks."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        digests: list[Any] = [None] * self.world
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise RuntimeError(f"{what} differs between ranks (rank 0 vs ranks {differ})")
        return value


# -- moving results and tensors between processes -------------------------------------------
def _pack(result: LayerResult) -> tuple[type, dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = result.to_state()
    return type(result), tensors, meta


def _unpack(state: tuple[type, dict[str, torch.Tensor], dict[str, Any]]) -> LayerResult:
    cls, tensors, meta = state
    return cls.from_state(tensors, meta)


def _device_of(value: Any) -> torch.device | None:
    if isinstance(value, torch.Tensor):
        return value.device
    if isinstance(value, list | tuple):
        for item in value:
            found = _device_of(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _device_of(list(value.values()))
    return None


def _to(value: Any, device: torch.device | None) -> Any:
    """``value`` with every tensor in it (lists, tuples, dicts) moved to ``device``."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
