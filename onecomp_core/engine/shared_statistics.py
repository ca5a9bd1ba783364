"""Statistics of a distributed run, summed exactly as one process sums them.

One process adds each calibration batch's product (XᵀX, QEP's pair) into its
accumulator in batch order. Floating-point addition is not associative, so
ranks that summed their own batches and then all-reduced the partial sums
would round differently from one process (and from each other run to run
with another split). Instead, while a rank runs its share of the batches,
each accumulator is fronted by a :class:`Recorded` that keeps the arguments
of every ``add`` (the layer's inputs of that batch). Then every accumulator
is given to one rank (by its size, largest first), the recorded inputs travel
there and are added in batch order — the very additions one process makes —
and the finished sums are broadcast: every rank ends with the bits one
process has. What travels is the layers' inputs of a sub-group (about one
block stream per accumulator) and the sums (in × in each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .distributed import Ranks, assign_layers, shard_range
from .statistics import InputStatistics


class Recorded:
    """Stands where an accumulator would: keeps ``add``'s arguments, tagged with the batch."""

    def __init__(self, target: Any, clock: list[int]) -> None:
        self.target, self.clock = target, clock
        self.calls: list[tuple[int, tuple]] = []

    def add(self, *args: Any) -> None:
        self.calls.append((self.clock[0], tuple(_detached(a) for a in args)))

    def of_batch(self, batch: int) -> list[tuple]:
        return [args for b, args in self.calls if b == batch]


class Recording:
    """Records one sub-group's statistics on this rank's batches, then fills them in exactly.

    ``clock`` is the global index of the batch being run: set it through :meth:`batch`
    (the i-th batch of this rank) before each one.
    """

    def __init__(self, ranks: Ranks, batches: int) -> None:
        self.ranks, self.count = ranks, batches
        self.mine = shard_range(batches, ranks.world, ranks.rank)
        self.clock = [self.mine.start]

    @classmethod
    def of(cls, ranks: Ranks, batches: int, collector: Any = None) -> Recording | None:
        """The recorder of one sub-group under torchrun (None in one process); a
        :class:`~.statistics.StatisticsCollector` given here makes recording accumulators."""
        if not ranks.distributed:
            return None
        record = cls(ranks, batches)
        if collector is not None:
            collector.new_stats = record.wrap(collector.new_stats)
        return record

    def batch(self, i: int) -> None:
        self.clock[0] = self.mine.start + i

    def on_batch(self, i: int, collector: Any) -> None:
        """QEP's per-batch callback: front its accumulators before the first batch."""
        if i == 0:
            collector.stats = self.front(collector.stats)
        self.batch(i)

    def wrap(self, make: Callable[..., Any]) -> Callable[..., Recorded]:
        """An accumulator factory whose accumulators record (for StatisticsCollector)."""
        return lambda *args: Recorded(make(*args), self.clock)

    def front(self, stats: dict[str, Any]) -> dict[str, Recorded]:
        """``stats`` (name → accumulator), each fronted by a recorder (for PairedCollector)."""
        return {name: Recorded(acc, self.clock) for name, acc in stats.items()}

    def finish_collector(self, collector: Any) -> None:
        """A StatisticsCollector's accumulators, finished (see :meth:`finish`)."""

        def make(name: str) -> InputStatistics:
            module = collector.layers[name]
            return InputStatistics(
                module.in_features, collector.kind, collector.dtype, module.weight.device
            )

        collector.stats = self.finish(collector.stats, make)

    def finish(
        self, recorded: dict[str, Recorded], make: Callable[[str], Any] | None = None
    ) -> dict[str, Any]:
        """The accumulators, summed over every rank's batches in batch order, on every rank.

        ``make(name)``: an empty accumulator, for a name this rank's batches never reached.
        """
        ranks = self.ranks
        names = sorted(set().union(*ranks.all_gather(sorted(recorded))))
        for name in names:
            if name not in recorded:
                if make is None:
                    raise RuntimeError(f"no calibration token reached layer {name!r} on this rank")
                recorded[name] = Recorded(make(name), self.clock)
        sizes = {n: float(sum(t.numel() for t in recorded[n].target.accumulators())) for n in names}
        owners = assign_layers(sizes, ranks.world)
        for name in names:
            self._sum(recorded[name], owners[name])
        for name in names:  # every rank gets the finished sums
            target = recorded[name].target
            tensors = target.accumulators()
            count = torch.tensor([target.tokens], dtype=torch.int64, device=tensors[0].device)
            ranks.broadcast([*tensors, count], owners[name])
            target.tokens = int(count.item())
        return {name: recorded[name].target for name in names}

    def _sum(self, record: Recorded, owner: int) -> None:
        """Add every batch's recorded arguments into the owner's accumulator, in batch order."""
        ranks, me = self.ranks, self.ranks.rank
        for batch in range(self.count):
            source = _holder(batch, self.count, ranks.world)
            if source == owner == me:
                calls = record.of_batch(batch)
            elif source == me:
                ranks.send(record.of_batch(batch), owner)
                continue
            elif owner == me:
                calls = ranks.receive(source, record.target.accumulators()[0].device)
            else:
                continue
            for args in calls:
                record.target.add(*args)
        record.calls = []


def _holder(batch: int, count: int, world: int) -> int:
    """The rank whose share holds ``batch`` (shares as :func:`shard_range` cuts them)."""
    return next(r for r in range(world) if batch in shard_range(count, world, r))


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value
