"""Seconds per phase of a run: what ``benchmarks/scale.py`` reads to split a run's time into
calibration forwards and solves (``capture_s + forward_s`` is one forward of the model)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Timings(dict[str, float]):
    """Phase name → seconds, summed over every time the phase ran.

    ``after_each`` runs when a phase ends: the engine gives the heap's free
    pages back there (:func:`~onecomp_core.engine.heap.trim_heap`), so what one
    phase freed is not still resident at the next one's peak.
    """

    def __init__(self, after_each: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.after_each = after_each

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[key] = self.get(key, 0.0) + time.perf_counter() - start
            if self.after_each is not None:
                self.after_each()
