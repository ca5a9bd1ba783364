"""The model as its blocks, one at a time: the engine's :class:`~onecomp_core.contract.ModelWalk`.

Model-level steps (DBF's distillation, AutoBit's gradient moments, the
streamed evaluation) run through this instead of ``model(...)``: the batches
are embedded once, each block is put on the compute device only while it is
used, and the model's end (final norm, head: :mod:`.tail`) runs on the last
block's outputs. Peak device memory is one block plus the modules outside the
blocks (embeddings, final norm, head) plus the activations the step keeps.

The modules outside the blocks move to the device on first use and back when
the walk is closed (``with open_walk(...) as walk``), so a step that calls
:meth:`Walk.end` once per batch does not move the head each time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..contract.views import Batch, ModelWalk
from . import blocks as blockwise
from .tail import run_end


def _home(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


class Walk(ModelWalk):
    """A model's blocks one at a time on ``device`` (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        source: Any = None,
        fill: Callable[[str, nn.Module, Collection[str]], None] | None = None,
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        #: a streamed model (``data.streamed.StreamedModel``): blocks and the modules outside
        #: them are read from disk when used and freed after; None: the model is in memory
        self.source = source if source is not None and source.streamed else None
        #: writes the results known so far into a block just read from disk (its name, the
        #: block, the layers to leave out): a streamed block comes back with its original weights
        self.fill = fill
        prefix, self.blocks = blockwise.find_blocks(model)
        self.prefix = prefix
        self.names = [f"{prefix}.{i}" for i in range(len(self.blocks))]
        inside = {id(t) for t in [*self.blocks.parameters(), *self.blocks.buffers()]}
        params = {id(p): p for p in model.parameters() if id(p) not in inside}  # tied: once
        self._params = list(params.values())
        self._buffers = [
            (module, key)
            for module in model.modules()
            for key, b in module._buffers.items()
            if b is not None and id(b) not in inside
        ]
        self._homes: list[torch.device] | None = None
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._has_head = isinstance(head, nn.Module)

    @property
    def has_head(self) -> bool:
        return self._has_head

    # -- the modules outside the blocks ----------------------------------------------------------
    def _outer_on_device(self) -> None:
        if self._homes is not None:
            return
        self._homes = [p.device for p in self._params]
        self._homes += [module._buffers[key].device for module, key in self._buffers]
        self._move_outer([self.device] * len(self._homes))

    def _move_outer(self, devices: list[torch.device]) -> None:
        for p, device in zip(self._params, devices, strict=False):
            p.data = p.data.to(device)
        for (module, key), device in zip(self._buffers, devices[len(self._params) :], strict=True):
            module._buffers[key] = module._buffers[key].to(device)

    def close(self) -> None:
        """Move the modules outside the blocks back where they were."""
        if self._homes is not None:
            self._move_outer(self._homes)
            self._homes = None

    # -- the walk ----------------------------------------------------------------------------------
    def start(self, batches: list[Batch]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        if self.source is not None:
            with self.source.outside(self.prefix, self.device):
                return blockwise.capture_inputs(self.model, self.blocks[0], batches, self.device)
        self._outer_on_device()
        return blockwise.capture_inputs(self.model, self.blocks[0], batches, self.device)

    @contextmanager
    def block(self, index: int, skip: Collection[str] = ()) -> Iterator[nn.Module]:
        if self.source is not None:
            try:
                block = self.source.materialize(self.names[index], self.device, skip=skip)
                if self.fill is not None:
                    self.fill(self.names[index], block, skip)
                yield block
            finally:
                self.source.release(self.names[index])
            return
        block = self.blocks[index]
        home = _home(block)
        block.to(self.device)
        try:
            yield block
        finally:
            block.to(home)

    def end(self, finals: list[torch.Tensor], batches: list[Batch]) -> Iterator[torch.Tensor]:
        if self.source is not None:
            return self._streamed_end(finals, batches)
        self._outer_on_device()
        return run_end(self.model, self.blocks, finals, batches, self.device)

    def _streamed_end(self, finals: list[torch.Tensor], batches: list[Batch]):
        with self.source.outside(self.prefix, self.device):
            yield from run_end(self.model, self.blocks, finals, batches, self.device)

    def run(
        self, hidden: list[torch.Tensor], kwargs: list[dict[str, Any]], first: int = 0
    ) -> list[torch.Tensor]:
        """``hidden`` (inputs of block ``first``) through blocks ``first``… (no gradients)."""
        with torch.no_grad():
            for index in range(first, len(self.blocks)):
                with self.block(index) as block:
                    hidden = [
                        blockwise.run_block(block, x, kw)
                        for x, kw in zip(hidden, kwargs, strict=True)
                    ]
        return hidden


@contextmanager
def open_walk(model: nn.Module, device: torch.device | str, source: Any = None) -> Iterator[Walk]:
    """A :class:`Walk` over ``model``; the modules outside the blocks go home afterwards."""
    walk = Walk(model, device, source)
    try:
        yield walk
    finally:
        walk.close()
