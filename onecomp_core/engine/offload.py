"""Where a run's activations live, and what leaves memory once used: calibration activations
on disk, activations and other layers' weights set aside during the solves, written results'
tensors.

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
from collections.abc import Iterable, Iterator, Sequence
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
    parked = []
    for module in modules:
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.numel() and OnDisk.supports(weight):
            parked.append((weight, OnDisk(weight.data)))
            weight.data = weight.data.new_empty(0)
    try:
        yield
    finally:
        for weight, file in parked:
            weight.data = file.take()
