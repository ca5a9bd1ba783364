"""A batch through a block in pieces of whole sequences: the same result, a bounded graph.

Training through a block keeps every activation of the batch for the
backward pass: a TinyLlama-shape block keeps ~0.3 MB a token, 0.6 GB for a
2048-token calibration batch, more than the block's weights. Sequences do
not mix inside a block, so a batch can run (and be backpropagated) a few
sequences at a time, holding one piece's graph; the gradients add up to the
whole batch's (in another summation order). Used by the engine's block
fine-tuning and by the streamed distillations' backward through each block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..contract import ModelWalk
from ..contract.finetune import TOKENS_PER_BACKWARD


def sequence_pieces(hidden: torch.Tensor, tokens: int = TOKENS_PER_BACKWARD) -> list[slice]:
    """Row ranges of ``hidden`` (batch × sequence × features) of about ``tokens`` tokens each
    (whole sequences, at least one a piece)."""
    rows = hidden.shape[0]
    per_row = max(1, hidden.shape[:-1].numel() // max(1, rows))
    size = max(1, tokens // per_row)
    return [slice(start, min(rows, start + size)) for start in range(0, rows, size)]


def batch_rows(value: Any, rows: slice, batch: int) -> Any:
    """The kwargs structure for the sequences ``rows`` of a ``batch``-sequence batch.

    A tensor of two or more dimensions whose first is ``batch`` is per sequence
    (an attention mask, per-sequence positions) and is sliced; anything else
    (rotary tables broadcast over the batch, cache positions) is shared.
    """
    if isinstance(value, torch.Tensor):
        per_sequence = batch > 1 and value.dim() >= 2 and value.shape[0] == batch
        return value[rows] if per_sequence else value
    if isinstance(value, tuple | list):
        return type(value)(batch_rows(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {k: batch_rows(v, rows, batch) for k, v in value.items()}
    return value


def backward_in_pieces(
    block: nn.Module,
    hidden: torch.Tensor,
    kwargs: dict[str, Any],
    grad: torch.Tensor,
    input_grad: bool,
    tokens: int = TOKENS_PER_BACKWARD,
) -> torch.Tensor | None:
    """Backpropagate ``grad`` (d loss / d output) through ``block`` run on ``hidden``.

    The block is re-run a piece at a time (:func:`sequence_pieces`), each
    piece backpropagated before the next runs; the parameters' gradients
    accumulate as for the whole batch. Returns d loss / d ``hidden`` when
    ``input_grad`` (else None, and no input gradient is computed).
    """
    batch = hidden.shape[0]
    into = torch.empty_like(hidden) if input_grad else None
    for rows in sequence_pieces(hidden, tokens):
        x = hidden[rows].detach().requires_grad_(input_grad)
        y = ModelWalk.run(block, x, batch_rows(kwargs, rows, batch))
        y.backward(grad[rows])
        if into is not None:
            into[rows] = x.grad
        del x, y
    return into


def run_in_pieces(
    block: nn.Module,
    hidden: torch.Tensor,
    kwargs: dict[str, Any],
    tokens: int = TOKENS_PER_BACKWARD,
) -> torch.Tensor:
    """``block``'s output on ``hidden`` (under no_grad), a piece of sequences at a time, so the
    block's widest intermediates exist for one piece."""
    pieces = sequence_pieces(hidden, tokens)
    if len(pieces) == 1:
        return ModelWalk.run(block, hidden, kwargs)
    batch = hidden.shape[0]
    return torch.cat(
        [ModelWalk.run(block, hidden[rows], batch_rows(kwargs, rows, batch)) for rows in pieces]
    )
