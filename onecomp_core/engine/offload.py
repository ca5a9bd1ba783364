"""Where a run's activations live, and what leaves memory once used: calibration activations
on disk, activations and other layers' weights set aside during the solves and the statistics
passes, a group's unsolved layers waiting on disk for their turn, written results' tensors.

:class:`Streams` are the activations entering the current block (lists, or
:class:`DiskStream` files).

With ``--offload-activations DIR`` the streams between blocks (one hidden
state per calibration batch) are safetensors files under ``DIR``, read back
one batch at a time; a stream's files are deleted as soon as nothing holds
the stream any more (the block after it has consumed it). A result whose
block is written to the output keeps only its JSON fields and the shapes of
its tensors (meta tensors), enough for the summary and the per-layer table.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..contract import LayerResult
from ..kernels.on_disk import OnDisk


@dataclasses.dataclass
class Streams:
    """Calibration activations entering the current block."""

    quantized: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    token_masks: list[torch.Tensor | None]
    full_precision: list[torch.Tensor] | None = None


class DiskStream(Sequence):
    """A list of tensors kept as one safetensors file each; read on access."""

    def __init__(self, folder: Path, tensors: Iterable[torch.Tensor]) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        weakref.finalize(self, shutil.rmtree, folder, True)
        self._devices: list[torch.device] = []
        for i, tensor in enumerate(tensors):
            save_file(
                {"t": tensor.detach().cpu().contiguous()}, str(folder / f"{i:06d}.safetensors")
            )
            self._devices.append(tensor.device)

    def __len__(self) -> int:
        return len(self._devices)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        tensor = load_file(str(self.folder / f"{index:06d}.safetensors"))["t"]
        return tensor.to(self._devices[index])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))


class DiskStreams:
    """Makes :class:`DiskStream` s in a private folder under ``root``."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="onecomp-activations-", dir=root))
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        self._count = itertools.count()

    def stream(self, tensors: Iterable[torch.Tensor]) -> DiskStream:
        return DiskStream(self.folder / f"stream-{next(self._count):05d}", tensors)


@contextmanager
def set_aside(*streams: Sequence[torch.Tensor] | None) -> Iterator[None]:
    """In-memory streams' tensors in temporary files inside the ``with``, back after.

    A layer solve reads none of the block's activations, yet they sat beside
    its (in × in) matrices: 128 MB for 32×256 tokens at hidden 2048 (the
    quantized inputs and the fp outputs). Lists of CPU tensors are emptied in
    place and refilled with the same bytes; anything else (a
    :class:`DiskStream`, tensors on an accelerator, None) stays as it is.
    """
    parked = []
    for stream in streams:
        if isinstance(stream, list) and stream and all(OnDisk.supports(t) for t in stream):
            parked.append((stream, [OnDisk(t) for t in stream]))
            stream.clear()
    try:
        yield
    finally:
        for stream, files in parked:
            stream.extend(f.take() for f in files)


class _Reader(Sequence):
    """Batches on disk, each read when indexed (a new tensor each time)."""

    def __init__(self, files: list[OnDisk]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:  # type: ignore[override]
        return self.files[index].read()


@contextmanager
def read_in_turn(stream: Sequence[torch.Tensor]) -> Iterator[Sequence[torch.Tensor]]:
    """An in-memory stream on disk inside the ``with``: yields a view that reads a batch
    when it is indexed; the list is refilled (the same bytes) after.

    A statistics pass needs one batch at a time, yet the whole stream (64 MB for 32×256
    tokens at hidden 2048) sat beside the block's weights, its accumulators and the
    forward's intermediates, the peak of a block. Anything else than a list of CPU
    tensors (a :class:`DiskStream`, an accelerator's) is yielded as it is.
    """
    if not (isinstance(stream, list) and stream and all(OnDisk.supports(t) for t in stream)):
        yield stream
        return
    files = [OnDisk(t) for t in stream]
    stream.clear()
    try:
        yield _Reader(files)
    finally:
        stream.extend(f.take() for f in files)


class ParkedResults:
    """Finished blocks' results with their tensors on disk until a model-level step reads them.

    A method with a model pass (DBF's distillation) needs every result again after the
    last block, so the writer keeps them; held through the walk they grew the run by a
    block's packed results at every block (8 MB at TinyLlama's shape at 1.5 bits, 64 MB
    over 8 blocks). Parked, each tensor field is a meta tensor of its shape (enough for
    the summary) until :meth:`revive` puts the same bytes back.
    """

    def __init__(self) -> None:
        self._files: dict[str, list[tuple[str, OnDisk]]] = {}

    def park(self, results: dict[str, LayerResult], names: Iterable[str]) -> None:
        for name in names:
            result, files = results[name], self._files.setdefault(name, [])
            for field in dataclasses.fields(result):
                value = getattr(result, field.name)
                if isinstance(value, torch.Tensor) and value.numel() and OnDisk.supports(value):
                    files.append((field.name, OnDisk(value)))
                    setattr(result, field.name, torch.empty_like(value, device="meta"))

    def revive(self, results: dict[str, LayerResult]) -> None:
        for name, files in self._files.items():
            for field, file in files:
                setattr(results[name], field, file.take())
        self._files.clear()


def _park_weight(module: nn.Module) -> tuple[torch.Tensor, OnDisk] | None:
    """``module``'s dense CPU weight into a temporary file, its memory freed; None when it
    has none (meta, empty) or it is on an accelerator. ``weight.data = file.take()`` undoes it."""
    weight = getattr(module, "weight", None)
    if not (isinstance(weight, torch.Tensor) and weight.numel() and OnDisk.supports(weight)):
        return None
    parked = (weight, OnDisk(weight.data))
    weight.data = weight.data.new_empty(0)
    return parked


def light_result(result: LayerResult) -> LayerResult:
    """A copy of ``result`` whose tensors are meta tensors of the same shapes and dtypes."""
    return drop_tensors(copy.copy(result))


def drop_tensors(result: LayerResult) -> LayerResult:
    """``result`` itself with its tensors replaced by meta tensors (their memory freed)."""
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, torch.Tensor):
            setattr(result, field.name, torch.empty_like(value, device="meta"))
    return result


@contextmanager
def weights_aside(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The dense CPU weights of ``modules`` in temporary files inside the ``with``, back after.

    A sub-group's solves read only their own layers' weights, yet the rest of
    the block stayed beside them: during a TinyLlama-shape block's down_proj
    solve its attention and gate/up layers' weights, 134 MB in fp32. Each comes
    back as the same bytes (:class:`OnDisk`), so no result changes; weights on
    an accelerator or not materialized (meta) stay as they are.
    """
    parked = [item for item in map(_park_weight, modules) if item is not None]
    try:
        yield
    finally:
        for weight, file in parked:
            weight.data = file.take()


@contextmanager
def weights_until_used(modules: Iterable[nn.Module]) -> Iterator[None]:
    """The dense CPU weights of ``modules`` in temporary files until their forward is entered.

    A statistics pass stops at the last layer it needs, so the layers after it never run:
    for a whole block as one group (DBF), down_proj's weight (44 MB at TinyLlama's shape)
    sat beside the pass's peak; for q/k/v, everything after them. Each weight comes back
    (the same bytes) when its module's forward starts, the rest when the ``with`` ends.
    Enter it after the hooks that may stop the pass: pre-hooks run in registration order.
    """
    parked: dict[int, tuple[torch.Tensor, OnDisk]] = {}

    def bring_back(module: nn.Module, args: tuple) -> None:
        item = parked.pop(id(module), None)
        if item is not None:
            item[0].data = item[1].take()

    handles = []
    for module in modules:
        item = _park_weight(module)
        if item is not None:
            parked[id(module)] = item
            handles.append(module.register_forward_pre_hook(bring_back))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for weight, file in parked.values():
            weight.data = file.take()


@contextmanager
def solved_in_turn(
    modules: Mapping[str, nn.Module],
    hessians: dict[str, torch.Tensor | None],
    names: Sequence[str],
) -> Iterator[Callable[[str], None]]:
    """A group's layers after the first wait on disk (dense CPU weight and H) for their solve.

    Yields ``ready(name)``, which brings layer ``name``'s weight and its entry of
    ``hessians`` back (the same bytes) just before its solve. A method that solves a
    whole block as one group (DBF) had every layer's weight and H resident during
    every solve: during a TinyLlama-shape gate_proj solve, up and down's weights
    (88 MB) and down's (5632²) H (121 MB). Each is written and read once. An H
    shared by several layers, tensors on an accelerator and meta weights stay put;
    whatever is still waiting when the ``with`` ends comes back then.
    """
    tensors = [h for h in hessians.values() if isinstance(h, torch.Tensor)]
    shared = {id(h) for h in tensors if sum(t is h for t in tensors) > 1}
    weights: dict[str, tuple[torch.Tensor, OnDisk]] = {}
    stats: dict[str, OnDisk] = {}
    h = None
    for name in names[1:]:
        item = _park_weight(modules[name])
        if item is not None:
            weights[name] = item
        h = hessians.get(name)
        if isinstance(h, torch.Tensor) and h.numel() and OnDisk.supports(h) and id(h) not in shared:
            stats[name] = OnDisk(h)
            hessians[name] = None
    del tensors, h  # no reference left to what waits on disk

    def ready(name: str) -> None:
        if name in weights:
            weight, file = weights.pop(name)
            weight.data = file.take()
        if name in stats:
            hessians[name] = stats.pop(name).take()

    try:
        yield ready
    finally:
        for name in [*weights, *stats]:
            ready(name)
