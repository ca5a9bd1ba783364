"""glibc heap hygiene: freed memory goes back to the system, so the peak is what is live.

A real-size run frees a block's worth of tensors every few seconds. glibc
keeps freed memory for reuse, which the resident-memory figures of a run (and
the machine) then still count: large buffers after glibc raised its mmap
threshold, small ones (per-column temporaries, Python objects) as heap
fragments that grow over the first blocks. Both calls are no-ops where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

#: mallopt's parameter numbers in glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def return_freed_memory() -> None:
    """Make glibc give large freed buffers back to the system at once.

    glibc raises its mmap threshold after the first large free, so later
    block-sized tensors come from the heap and the heap's high-water mark stays
    resident: a freed block would still count. A fixed threshold (64 KiB)
    keeps every tensor of that size in its own mapping, unmapped when freed. The
    heap's free top goes back at once too (no trim threshold, no top pad, as
    ``MALLOC_TRIM_THRESHOLD_=0 MALLOC_TOP_PAD_=0``): the 8-block synthetic GPTQ run
    peaked at 1015 MiB with this (da6fd33) against 1116 MiB before (71afc25), rows of
    ``python benchmarks/scale.py --blocks 2 8 --methods gptq`` in
    ``benchmarks/results/scale.jsonl``.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 0)
        libc.mallopt(_M_TOP_PAD, 0)


def trim_heap() -> None:
    """Give the free pages inside glibc's heaps back (``malloc_trim(0)``, a few ms): the engine
    calls it after every phase and block. Fragments of small freed allocations otherwise stay
    resident, add up over the blocks, and differ from run to run (in a throwaway probe,
    glibc's main arena held 233 MiB free during one DBF block's forward, 4 MiB in another run)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["return_freed_memory", "trim_heap"]
