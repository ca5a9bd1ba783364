"""Statistics of a distributed run, summed exactly as one process sums them.

One process adds each calibration batch's product (XᵀX, QEP's pair) into its
accumulator in batch order. Floating-point addition is not associative, so
ranks that summed their own batches and then all-reduced the partial sums
would round differently from one process. Instead, while a rank runs its
share of the batches, each accumulator is fronted by a :class:`Recorded` that
keeps the arguments of every ``add`` (the layer's inputs of that batch). Then,
batch by batch in order, the rank holding a batch broadcasts its inputs and
every rank adds them into its own share of the sum's rows (``add(...,
rows=…)``, rows cut at multiples of 64): the very products and additions one
process makes, entry for entry. Finally each rank broadcasts its rows, and
every rank holds the bits one process has. A diagonal (``"diag"``
statistics) is cheap: every rank adds it whole. What travels is each
sub-group's layer inputs once and the sums (in × in each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .distributed import Ranks, row_shares, shard_range
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
        for name in names:
            self._sum(recorded[name])
        return {name: recorded[name].target for name in names}

    def _sum(self, record: Recorded) -> None:
        """Every batch's recorded arguments, in batch order, added into this rank's rows; then
        each rank's rows to every rank.

        The batches are taken a window at a time (:data:`WINDOW_BYTES` of inputs) and added
        one row slice (:data:`SLICE_ROWS`) at a time: each slice of the sum stays in cache
        while the window's batches are added into it, where a whole share per batch streams
        the (in × in) sum through memory once per batch, and two ranks on two cores then
        fight over memory bandwidth. Every entry still gets the same products in the same
        batch order, so the bits stay those of one process.
        """
        ranks, target = self.ranks, record.target
        sums = target.accumulators()
        split = sums[0].dim() == 2
        shares = row_shares(sums[0].shape[0], ranks.world) if split else None
        mine = shares[ranks.rank] if split else None
        window: list[tuple] = []
        for batch in range(self.count):
            source = _holder(batch, self.count, ranks.world)
            window += ranks.share_calls(record.of_batch(batch), source, sums[0].device)
            if batch + 1 == self.count or _bytes(window) >= WINDOW_BYTES:
                _add_window(target, window, mine)
                window = []
        record.calls = []
        if split:
            for rank, rows in enumerate(shares):
                if rows.stop > rows.start:
                    ranks.broadcast([total[rows] for total in sums], rank)


#: recorded inputs added into one row slice before the next (bytes of tensors)
WINDOW_BYTES = 48 << 20
#: rows of the sum (a multiple of 64, as the rank shares) that one window is added into at once
SLICE_ROWS = 512


def _add_window(target: Any, calls: list[tuple], mine: slice | None) -> None:
    """``calls`` (in batch order) added into ``target``: a diagonal whole, a matrix slice by
    slice of ``mine``; the token count grows once per call, as in one process."""
    if mine is None or mine.stop == mine.start:
        for args in calls:
            if mine is None:
                target.add(*args)
            else:
                target.add(*args, rows=mine)
        return
    counted = None
    for r0 in range(mine.start, mine.stop, SLICE_ROWS):
        rows = slice(r0, min(mine.stop, r0 + SLICE_ROWS))
        for args in calls:
            target.add(*args, rows=rows)
        counted = target.tokens if counted is None else counted
        target.tokens = counted  # each call's tokens count once, not once per slice


def _bytes(calls: list[tuple]) -> int:
    tensors = (a for args in calls for a in args if isinstance(a, torch.Tensor))
    return sum(t.numel() * t.element_size() for t in tensors)


def _holder(batch: int, count: int, world: int) -> int:
    """The rank whose share holds ``batch`` (shares as :func:`shard_range` cuts them)."""
    return next(r for r in range(world) if batch in shard_range(count, world, r))


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value
