"""Training helpers shared by every fine-tuning and distillation of quantized layers.

The engine's block fine-tuning, the kernels' streamed distillation and the
DBF plugin's distillation all swap trainable twins into a module with the
rest frozen, keep small problems on one thread, and move an optimizer's
state with the block it belongs to. One copy of each lives here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

#: GEMMs below this many multiply-adds run on one thread: on a busy machine the second
#: thread's wait dominates (a 64×64 layer fit: 3-7 s on 2 threads, 0.15-0.2 s on one)
SMALL_GEMM = 1 << 24


@contextmanager
def swapped_in(
    root: nn.Module, layers: Mapping[str, nn.Module], twins: Mapping[str, nn.Module]
) -> Iterator[None]:
    """``root`` with each twin in its layer's place and every other parameter frozen.

    Afterwards the original layers are back and the frozen parameters train
    again: the module is left exactly as it was.
    """
    wanted = {layers[n]: n for n in twins}
    parents = {}
    for parent in root.modules():
        for attr, child in parent.named_children():
            if child in wanted:
                parents[wanted[child]] = (parent, attr)
    frozen = [p for p in root.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for name, (parent, attr) in parents.items():
        setattr(parent, attr, twins[name])
    try:
        yield
    finally:
        for name, (parent, attr) in parents.items():
            setattr(parent, attr, layers[name])
        for p in frozen:
            p.requires_grad_(True)


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


def move_optimizer_state(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """An optimizer's moments onto ``device`` (with the block whose parameters they follow)."""
    for state in opt.state.values():
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor) and value.device != device:
                state[key] = value.to(device)
