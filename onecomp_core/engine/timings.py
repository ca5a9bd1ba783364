"""Seconds per phase of a run: what ``benchmarks/scale.py`` reads to split a run's time into
calibration forwards and solves (``capture_s + forward_s`` is one forward of the model)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings(dict[str, float]):
    """Phase name → seconds, summed over every time the phase ran."""

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[key] = self.get(key, 0.0) + time.perf_counter() - start
