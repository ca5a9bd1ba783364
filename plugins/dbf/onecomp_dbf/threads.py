"""Tiny matrix work on one thread: the fit and the fine-tuning of small layers.

On a busy machine, multi-threaded GEMMs of a few thousand elements spend
their time waiting for the second thread (measured: a 64×64 layer fit took
3-7 s on 2 threads under load and 0.15-0.2 s on one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: GEMMs below this many multiply-adds run on one thread
SMALL_GEMM = 1 << 24


@contextmanager
def small_problem_threads(multiply_adds: int) -> Iterator[None]:
    """Run tiny matrix work on one thread, restoring the thread count afterwards."""
    before = torch.get_num_threads()
    if multiply_adds >= SMALL_GEMM or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
