"""glibc heap hygiene: trimming after a block gives freed small allocations back."""

from __future__ import annotations

import sys

import psutil
import pytest
import torch

from onecomp_core.engine.heap import _glibc, return_freed_memory, trim_heap
from onecomp_core.engine.timings import Timings


@pytest.mark.skipif(not sys.platform.startswith("linux") or _glibc() is None, reason="glibc only")
def test_trim_gives_freed_small_tensors_back_to_the_system():
    """Many small tensors (below the 64 KiB mmap threshold: heap memory) freed except every
    64th, so the heap cannot shrink from its top: only malloc_trim returns the free pages."""
    return_freed_memory()
    process = psutil.Process()
    before = process.memory_info().rss
    tensors = [torch.ones(4096) for _ in range(40_000)]  # 16 KiB each, ~640 MB of heap
    kept = tensors[::64]
    del tensors
    held = process.memory_info().rss
    trim_heap()
    after = process.memory_info().rss
    assert held - before > 300 * 2**20  # the freed fragments were still resident
    assert held - after > 300 * 2**20  # and trimming gave them back
    assert len(kept) == 625


def test_a_timed_phase_runs_its_after_each_hook_when_it_ends_even_on_failure():
    """The engine passes :func:`trim_heap` here (``test_walk`` checks the wiring)."""
    calls: list[float] = []
    timings = Timings(after_each=lambda: calls.append(timings.get("solve_s", -1.0)))
    with timings.timed("solve_s"):
        pass
    assert calls == [timings["solve_s"]]  # after the phase's seconds were added
    with pytest.raises(ValueError), timings.timed("solve_s"):
        raise ValueError
    assert len(calls) == 2 and Timings().after_each is None  # none unless given
