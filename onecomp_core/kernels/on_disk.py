"""A large CPU tensor set aside in a temporary file while a solve does not need it.

A layer solve sometimes needs a matrix again only at its end: DBF's refit
needs the (in × in) H after the ADMM, which meanwhile holds its own (in × in)
eigenbasis. Keeping H resident costs its size for the whole fit (121 MB for
a 5632-wide layer in fp32); writing it to an unnamed temporary file and
reading it back costs a fraction of a second and is exact (the same bytes).
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch


class OnDisk:
    """``tensor``'s bytes in an unnamed temporary file; :meth:`take` reads them back once.

    The caller drops its own references after building this, so the memory is
    freed. The file is removed by the system when closed (by :meth:`take`, or
    when this object is collected).
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        # the raw bytes (any dtype, bfloat16 too, which NumPy lacks), written without a copy
        data = tensor.detach().contiguous()
        self.shape, self.dtype = tuple(data.shape), data.dtype
        self._file = tempfile.TemporaryFile(prefix="onecomp-")
        data.reshape(-1).view(torch.uint8).numpy().tofile(self._file)
        self._file.flush()

    def take(self) -> torch.Tensor:
        """The tensor again (a new CPU tensor); the file is closed and gone."""
        tensor = self.read()
        self._file.close()
        return tensor

    def read(self) -> torch.Tensor:
        """A new CPU tensor with the bytes; the file stays for another read or :meth:`take`."""
        self._file.seek(0)
        raw = np.fromfile(self._file, dtype=np.uint8)
        return torch.from_numpy(raw).view(self.dtype).reshape(self.shape)

    @staticmethod
    def supports(tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` can be set aside: a CPU tensor (an accelerator's stays put)."""
        return tensor.device.type == "cpu"


class OnDiskStack:
    """A last-in, first-out stack of tensors whose CPU ones wait in temporary files.

    The streamed distillations keep every block's input of one batch for the
    backward through the blocks: 16 MB a TinyLlama-shape block for 2048
    tokens, the part of their memory that grows with depth. Pushed as they
    are made, popped in reverse, each comes back as the same bytes.
    ``aside=False`` keeps a tensor in memory (one held elsewhere anyway).
    """

    def __init__(self) -> None:
        self._items: list[OnDisk | torch.Tensor] = []

    def append(self, tensor: torch.Tensor, aside: bool = True) -> None:
        self._items.append(OnDisk(tensor) if aside and OnDisk.supports(tensor) else tensor)

    def pop(self) -> torch.Tensor:
        item = self._items.pop()
        return item.take() if isinstance(item, OnDisk) else item

    def __len__(self) -> int:
        return len(self._items)
