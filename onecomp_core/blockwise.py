"""The repeated blocks of a model, their captured inputs, and the per-block hook context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .result import QuantizationResult


@dataclass
class BlockContext:
    """What :meth:`Quantizer.on_block_quantized` sees after a block's layers are quantized.

    ``block`` sits on ``device`` with the dequantized weights of its quantized
    layers written in. ``inputs[i]`` is batch i of the quantized-stream inputs
    and ``kwargs[i]`` the keyword arguments the block is called with for it
    (attention mask, position embeddings, ...). When the quantizer sets
    ``wants_fp_stream``, ``fp_inputs`` are the full-precision model's inputs to
    this block and ``fp_outputs`` the original block's outputs on them: the
    targets a block-wise fine-tuning should match. A hook that changes
    weights must also update ``results`` so the saved model agrees.
    """

    index: int
    name: str
    block: nn.Module
    device: torch.device
    inputs: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    layers: dict[str, nn.Module]
    results: dict[str, QuantizationResult]
    fp_inputs: list[torch.Tensor] | None = None
    fp_outputs: list[torch.Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def run_block(self, batch: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output hidden states for batch ``batch`` (default: its quantized input)."""
        x = self.inputs[batch] if hidden is None else hidden
        return first_output(self.block(x.to(self.device), **self.kwargs[batch]))


def first_output(output: Any) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the hidden states."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise TypeError(f"cannot find hidden states in block output of type {type(output)}")
    return hidden
