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


@pytest.mark.skipif(not sys.platform.startswith("linux") or _glibc() is None, reason="glibc only")
def test_a_timed_phase_gives_its_freed_fragments_back_when_it_ends():
    """The engine's timings trim the heap after every phase (a layer's solve, a statistics
    pass): what one phase left as fragments is not resident during the next one."""
    return_freed_memory()
    process = psutil.Process()
    calls: list[str] = []
    timings = Timings(after_each=lambda: (calls.append("trim"), trim_heap()))
    with timings.timed("solve_s"):
        tensors = [torch.ones(4096) for _ in range(40_000)]
        kept = tensors[::64]
        del tensors
        held = process.memory_info().rss
    after = process.memory_info().rss
    assert held - after > 300 * 2**20 and calls == ["trim"] and timings["solve_s"] > 0
    with pytest.raises(ValueError), timings.timed("solve_s"):  # a failing phase trims too
        raise ValueError
    assert calls == ["trim", "trim"] and len(kept) == 625
