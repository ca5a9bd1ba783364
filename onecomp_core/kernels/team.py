"""The processes that build one layer's inverse-Hessian factor together.

A distributed run gives every rank a slice of the rows of every GPTQ-style
layer (``Method.row_block``), and each slice's solve needs the whole (in × in)
inverse factor: every rank would build the same factor, its cost not shared.
While the engine holds a :func:`working_together` block open around such a
solve, :mod:`.hessian_inverse` gives each member a share of the triangular
inverse (the larger part of the factor's cost) and the members exchange
their columns, so each still holds the whole factor, bit for bit the one a
lone process builds. The engine opens the block only where every rank makes
the same solve, with the same Hessian, at the same time; kernels look the team
up with :func:`current_team` (None: working alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Team:
    """This process's seat in the team: ``rank`` of ``world`` members; ``broadcast(t, src)``
    overwrites ``t`` on every member with member ``src``'s (``torch.distributed.broadcast``)."""

    rank: int
    world: int
    broadcast: Callable[[torch.Tensor, int], object]


_TEAM: ContextVar[Team | None] = ContextVar("onecomp_team", default=None)


@contextmanager
def working_together(team: Team | None) -> Iterator[None]:
    """Kernels called inside share their per-layer work with ``team`` (None: alone)."""
    token = _TEAM.set(team if team is not None and team.world > 1 else None)
    try:
        yield
    finally:
        _TEAM.reset(token)


def current_team() -> Team | None:
    """The team of the solve running now; None when this process works alone."""
    return _TEAM.get()


__all__ = ["Team", "current_team", "working_together"]
