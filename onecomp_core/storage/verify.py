"""The strict load: every saved tensor checked against the module it is loaded into.

A saved folder is trusted only after each tensor has the name, shape and
dtype the empty model expects, holds finite numbers, and every packed layer
agrees with its own invariants (``state_problems()``: index ranges, codes
within 2^bits, padding). A wrong file then fails in one line naming the
tensor, never as a model that loads and silently computes garbage (a
``qweight`` stored as float32 still has the right shape) or crashes later at
inference (a ``g_idx`` out of range).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: problems listed per kind before "(+N more)"
_SHOWN = 5


def state_problems(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    packed: Iterable[str],
) -> list[str]:
    """Missing, unexpected, wrongly shaped or typed, and non-finite tensors, by kind.

    Tensors of the ``packed`` layers must have exactly the dtype of the empty
    layer's buffers (their bits are codes, not numbers to convert); other
    tensors (embeddings, norms) only the same kind (floating point or integer),
    since a model may be saved in any floating dtype.
    """
    expected = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    prefixes = tuple(f"{name}." for name in packed)
    problems: dict[str, list[str]] = {
        "missing": [k for k in expected if k not in tensors and k not in tied],
        "unexpected": [k for k in tensors if k not in expected],
        "wrong shape": [],
        "wrong dtype": [],
        "not finite": [],
    }
    for key, tensor in tensors.items():
        if key not in expected:
            continue
        want = expected[key]
        if tensor.shape != want.shape:
            problems["wrong shape"].append(
                f"{key}: saved {tuple(tensor.shape)}, expected {tuple(want.shape)}"
            )
        if not _dtype_fits(tensor.dtype, want.dtype, exact=key.startswith(prefixes)):
            problems["wrong dtype"].append(f"{key}: saved {tensor.dtype}, expected {want.dtype}")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            problems["not finite"].append(f"{key} holds NaN or Inf")
    return _lines(problems)


def layer_problems(model: nn.Module, packed: Iterable[str]) -> list[str]:
    """What each loaded packed layer finds wrong with its own tensors (``state_problems()``)."""
    found = []
    for name in packed:
        check = getattr(model.get_submodule(name), "state_problems", None)
        if check is not None:
            found += [f"{name}.{problem}" for problem in check()]
    return _lines({"invalid": found})


def _dtype_fits(saved: torch.dtype, wanted: torch.dtype, exact: bool) -> bool:
    if exact:
        return saved == wanted
    return saved.is_floating_point == wanted.is_floating_point and (saved == torch.bool) == (
        wanted == torch.bool
    )


def _lines(problems: dict[str, list[str]]) -> list[str]:
    lines = []
    for label, items in problems.items():
        if items:
            more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            lines.append(f"{label}: {', '.join(items[:_SHOWN])}{more}")
    return lines
