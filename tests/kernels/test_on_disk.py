"""OnDisk: a tensor set aside in a temporary file comes back with the same bytes, and its
memory is freed meanwhile; OnDiskStack, a stack of them."""

from __future__ import annotations

import gc
import weakref

import torch

from onecomp_core.engine.offload import read_in_turn, set_aside
from onecomp_core.kernels import OnDisk, OnDiskStack


def test_a_tensor_comes_back_bit_identical_and_the_file_is_gone():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8):
        t = (10 * torch.randn(3, 37, 11, generator=torch.Generator().manual_seed(0))).to(dtype)
        parked = OnDisk(t[:, ::2])  # a non-contiguous view
        back = parked.take()
        assert back.dtype == dtype and back.shape == (3, 19, 11)
        assert torch.equal(back, t[:, ::2])
        assert parked._file.closed
    assert OnDisk.supports(torch.zeros(2, dtype=torch.bfloat16))
    assert not OnDisk.supports(torch.zeros(2, device="meta"))


def test_set_aside_frees_the_streams_inside_and_restores_them_after():
    stream = [torch.randn(2, 3, 4) for _ in range(3)]
    expected = [t.clone() for t in stream]
    alive = [weakref.ref(t) for t in stream]
    other = [torch.zeros(2, device="meta")]  # not in host memory: left alone
    with set_aside(stream, None, other):
        gc.collect()
        assert stream == [] and all(ref() is None for ref in alive)  # the memory is released
        assert len(other) == 1
    assert len(stream) == 3
    for got, want in zip(stream, expected, strict=True):
        assert torch.equal(got, want)


def test_the_stack_gives_back_the_same_tensors_last_first_and_holds_none_of_them():
    stack = OnDiskStack()
    made = [torch.randn(3, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    copies = [t.clone() for t in made]
    refs = [weakref.ref(t) for t in made]
    kept = made[0]
    stack.append(made[0], aside=False)  # held elsewhere anyway: stays in memory
    for t in made[1:]:
        stack.append(t)
    del made, t
    assert refs[0]() is kept and refs[1]() is None and refs[2]() is None  # on disk, not here
    assert len(stack) == 3
    assert torch.equal(stack.pop(), copies[2]) and torch.equal(stack.pop(), copies[1])
    assert stack.pop() is kept and len(stack) == 0


def test_read_leaves_the_file_for_another_read_and_take_closes_it():
    t = torch.arange(12.0).reshape(3, 4)
    parked = OnDisk(t)
    first, second = parked.read(), parked.read()
    assert torch.equal(first, t) and torch.equal(second, t) and first is not second
    assert not parked._file.closed
    assert torch.equal(parked.take(), t) and parked._file.closed


def test_read_in_turn_empties_the_list_reads_on_index_and_refills_it():
    stream = [torch.full((2, 3), float(i)) for i in range(3)]
    with read_in_turn(stream) as batches:
        assert stream == [] and len(batches) == 3
        assert torch.equal(batches[2], torch.full((2, 3), 2.0))
        assert torch.equal(batches[0], torch.zeros(2, 3))
    assert [float(t[0, 0]) for t in stream] == [0.0, 1.0, 2.0]  # the same bytes, in order
    meta = [torch.zeros(2, device="meta")]
    with read_in_turn(meta) as batches:  # not on the CPU: yielded as it is
        assert batches is meta and len(meta) == 1
