"""The ranks of a torch.distributed run, as the block walk uses them.

When a process group is up (``torchrun`` and :mod:`onecomp_core.engine.launch`,
or a user's own ``init_process_group``), the walk splits its work:

- calibration batches are sharded: rank r runs the block forwards of a
  contiguous share of the batches (its streams never leave it);
- input statistics (XᵀX, its diagonal, QEP's paired matrices) are summed
  by one rank per accumulator in batch order from the inputs every rank
  recorded, then broadcast (:mod:`~onecomp_core.engine.shared_statistics`):
  the very additions one process makes, so the same bits;
- solves: a method that declares its rows separable (``row_block``, GPTQ)
  has every layer's rows split over the ranks and the slices joined
  (``join_rows``); otherwise the layers of a sub-group are assigned to ranks
  by solve cost (longest job first). Results are exchanged, so every rank
  writes back the same dequantized weights;
- a block hook (``on_block_done``, block fine-tuning) sees every batch: the
  block's streams are gathered to every rank, each runs it, rank 0's
  results win;
- rank 0 writes checkpoints (streams gathered to it) and the output; every
  rank returns from the run once the output is written
  (:meth:`Ranks.finish_together`).

One process is the same object with ``world == 1``: every call returns its
input and no collective runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ..contract import BlockView, LayerResult, Method
from ..kernels.team import Team

T = TypeVar("T")

#: numbers the runs that finish together in one process group (every rank counts alike)
_FINISHES = itertools.count()


def shard_range(count: int, world: int, rank: int) -> range:
    """The contiguous share of ``count`` items of ``rank`` (sizes differ by at most one)."""
    return range(rank * count // world, (rank + 1) * count // world)


def row_shares(rows: int, world: int, block: int = 64) -> list[slice]:
    """One contiguous slice of ``rows`` per rank, cut at multiples of ``block`` (sizes as equal
    as whole blocks allow; a rank gets an empty slice when there are fewer blocks than ranks)."""
    blocks = -(-rows // block)
    cuts = [shard_range(blocks, world, rank) for rank in range(world)]
    return [slice(min(rows, c.start * block), min(rows, c.stop * block)) for c in cuts]


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

    def finish_together(self, poll_s: float = 0.2) -> None:
        """Return on every rank once rank 0 has called this too (its output written).

        A run's last steps (a model-level step, the output's shards) are rank 0's alone;
        without this the other ranks returned before the output existed, and left the
        group while rank 0 still worked in it. Waits through the group's store with no time
        limit: a step of rank 0 may take longer than any collective's timeout, and a rank
        that fails ends the launch (torchrun stops the others; a lost store raises here).
        """
        if not self.distributed:
            return
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
        key = f"onecomp/finished/{next(_FINISHES)}"
        if self.is_writer:
            store.set(key, "1")
            return
        while not store.check([key]):  # a poll: a timed-out wait would print warnings
            time.sleep(poll_s)

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

    def gather(self, items: Sequence[Any], to_all: bool = True) -> Sequence[Any] | None:
        """Every rank's share of a per-batch list, concatenated in batch order.

        With ``to_all=False`` only rank 0 receives it (others get None).
        Tensors travel through the CPU (a pickled CUDA tensor would land on the
        sender's device) and come back on the device they left from.
        """
        if not self.distributed:
            return items
        import torch.distributed as dist

        items = list(items)  # a stream kept on disk (--offload-activations) is read here
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

    def for_hooks(self, view: BlockView, method: Method, fine_tunes: bool) -> BlockView:
        """``view`` with every rank's batches when block fine-tuning or a block hook reads it."""
        hooked = fine_tunes or type(method).on_block_done is not Method.on_block_done
        return self.whole(view) if hooked else view

    def whole(self, view: BlockView) -> BlockView:
        """``view`` with every rank's batches (for block fine-tuning and a block hook)."""
        if not self.distributed:
            return view
        fp_out = view.fp_outputs
        return dataclasses.replace(
            view,
            inputs=self.gather(view.inputs),
            kwargs=self.gather(view.kwargs),
            fp_outputs=None if fp_out is None else self.gather(fp_out),
        )

    # -- plain collectives (what shared_statistics and the solves use) ------------------------
    def all_gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, value)
        return parts

    def broadcast(self, tensors: list[torch.Tensor], source: int) -> None:
        """Overwrite ``tensors`` on every rank with those of rank ``source`` (same shapes)."""
        if self.distributed:
            import torch.distributed as dist

            for tensor in tensors:
                dist.broadcast(tensor, source)

    def share_calls(self, calls: list[tuple], source: int, device: torch.device) -> list[tuple]:
        """Rank ``source``'s argument tuples (tensors, None, plain values) on every rank;
        tensors arrive on ``device``."""
        if not self.distributed:
            return calls
        import torch.distributed as dist

        tensors: list[torch.Tensor] = []
        header = [tuple(_describe(a, tensors) for a in args) for args in calls]
        box: list[Any] = [header if self.rank == source else None]
        wire = device if device.type == "cuda" else None
        dist.broadcast_object_list(box, src=source, device=wire)
        if self.rank == source:
            for tensor in tensors:
                dist.broadcast(tensor.contiguous(), source)
            return calls
        received = []
        for args in box[0]:
            values = []
            for item in args:
                if isinstance(item, _TensorSpec):
                    tensor = torch.empty(item.shape, dtype=item.dtype, device=device)
                    dist.broadcast(tensor, source)
                    item = tensor
                values.append(item)
            received.append(tuple(values))
        return received

    # -- layer solves ---------------------------------------------------------------------------
    def team(self) -> Team | None:
        """Every rank as one team that builds a layer's shared factor together (see
        :mod:`onecomp_core.kernels.team`); None in one process."""
        if not self.distributed:
            return None
        import torch.distributed as dist

        return Team(self.rank, self.world, dist.broadcast)

    def exchange_parts(self, local: dict[str, LayerResult]) -> list[dict[str, LayerResult]]:
        """Every rank's ``local`` results (this rank's as they are), in rank order."""
        if not self.distributed:
            return [local]
        packed = self.all_gather({n: _pack(r) for n, r in local.items()})
        return [
            local if rank == self.rank else {n: _unpack(s) for n, s in part.items()}
            for rank, part in enumerate(packed)
        ]

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


@dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def _describe(value: Any, tensors: list[torch.Tensor]) -> Any:
    """A tensor as its spec (the tensor itself is sent after the header); others as they are."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _TensorSpec(tuple(value.shape), value.dtype)
    return value
