"""What the engine hands a method: one layer's job, and views of a block or of the run.

Views are read-only by convention: a hook returns the results it changed
and the engine writes them back, so state lives in one place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .result import LayerResult

Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class LayerMoments:
    """a (in,) = E[x²], b (out,) = E[g²]; with full factors XᵀX/N and GᵀG/N. float64, CPU."""

    a: torch.Tensor
    b: torch.Tensor | None
    tokens: int
    xtx: torch.Tensor | None = None
    gtg: torch.Tensor | None = None


@dataclass
class LayerJob:
    """One layer to quantize: its name (always set), module and statistics.

    ``hessian`` is H = (2/N)·XᵀX (in × in) when the method needs "full"
    inputs, its diagonal (in,) for "diag", None for "none". ``gradients``
    are the output-gradient moments b (out,) when the method asks for them.
    ``input`` is only set by seed-API callers who pass activations.
    """

    name: str
    module: nn.Module
    hessian: torch.Tensor | None = None
    gradients: torch.Tensor | None = None
    input: torch.Tensor | None = None
    #: set by the engine when the job holds the only reference to ``hessian`` and nothing
    #: reads the module's weight until the result is written back (see the ``take_`` methods)
    hands_over: bool = False

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight.data

    def take_hessian(self) -> torch.Tensor | None:
        """``hessian``; when the engine handed it over, the job forgets it.

        The (in × in) matrix is the largest of a layer's solve: a method that
        takes it can free it as soon as it has what it needs (GPTQ: once the
        inverse factor is made) instead of holding it to the end.
        """
        hessian = self.hessian
        if self.hands_over:
            self.hessian = None
        return hessian

    def take_weight(self) -> torch.Tensor:
        """``weight``; when the engine handed the job over, the module forgets it (an empty
        tensor until the engine writes the result back).

        A method that sets the weight aside while it solves (DBF: on disk through
        its eigendecomposition and ADMM, 44 MB for a 2048 × 5632 layer) frees
        it only this way: otherwise the module still holds it.
        """
        weight = self.module.weight.data
        if self.hands_over:
            self.module.weight.data = weight.new_empty(0)
        return weight

    def with_hessian(self, hessian: torch.Tensor | None) -> LayerJob:
        """The same job with other input statistics (for routing to another method)."""
        return LayerJob(self.name, self.module, hessian, self.gradients, self.input)


#: block class → whether its forward returns a tuple, recorded whenever a block runs through
#: :meth:`ModelWalk.run` (or the engine's ``run_block``); a model's end needs it
TUPLE_OUTPUT: dict[type, bool] = {}


def first_output(output: Any) -> torch.Tensor:
    """Decoder blocks return a tensor or a tuple whose first item is the hidden states."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return output[0]
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        raise TypeError(f"cannot find hidden states in block output of type {type(output)}")
    return hidden


@dataclass
class BlockView:
    """A block after its layers are quantized, before its outputs feed the next block.

    ``block`` sits on ``device`` with the dequantized weights written in.
    ``inputs[i]`` is batch i of the quantized-stream inputs and ``kwargs[i]``
    the keyword arguments the block is called with for it. With
    ``Needs.fp_stream``, ``fp_outputs`` are the original block's outputs on
    the full-precision model's inputs (those inputs are released once the
    outputs exist: a block never holds three streams).
    """

    index: int
    name: str
    block: nn.Module
    device: torch.device
    inputs: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    layers: dict[str, nn.Module]
    results: dict[str, LayerResult]
    fp_outputs: list[torch.Tensor] | None = None

    def run(self, batch: int, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """The block's output hidden states for batch ``batch`` (default: its quantized input)."""
        x = self.inputs[batch] if hidden is None else hidden
        return first_output(self.block(x.to(self.device), **self.kwargs[batch]))


class ModelWalk(ABC):
    """The model as its blocks, one at a time: how a model-level step runs the model.

    A model-level step (DBF's distillation, AutoBit's gradient moments, a
    streamed evaluation) never puts the whole model on one device: it embeds
    the batches (:meth:`start`), runs each block inside ``with walk.block(i)``
    (the block sits on :attr:`device` inside, and is released after), and
    applies what follows the last block, the final norm and head (:meth:`end`).
    Everything is differentiable when gradients are enabled, so a step may
    keep only block-boundary activations and backpropagate block by block,
    recomputing each block.
    """

    #: the compute device blocks are put on
    device: torch.device
    #: dotted name of each block ("model.layers.3"); a layer belongs to the block its name extends
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @abstractmethod
    def start(self, batches: list[Batch]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """Per batch, block 0's input hidden states and the keyword arguments of every block."""

    @abstractmethod
    def block(self, index: int, skip: Collection[str] = ()) -> AbstractContextManager[nn.Module]:
        """Block ``index`` on :attr:`device` inside the ``with``; released afterwards.

        ``skip``: full names of layers the caller swaps out (trainable twins):
        a streamed model neither reads their weights nor writes their results
        in, which a twin never reads (a block's fp32 Linears and their
        n·k·m dequantization per use, for DBF).
        """

    @abstractmethod
    def end(self, finals: list[torch.Tensor], batches: list[Batch]) -> Iterator[torch.Tensor]:
        """Per batch, the logits of the model's end applied to the last block's output."""

    @property
    @abstractmethod
    def has_head(self) -> bool:
        """Whether :meth:`end` gives logits (False for a model without an output head)."""

    @staticmethod
    def run(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        """One block's hidden-state output, whatever structure the block returns."""
        output = block(hidden, **kwargs)
        TUPLE_OUTPUT[type(block)] = isinstance(output, tuple | list)
        return first_output(output)

    @staticmethod
    def detached(value: Any) -> Any:
        """The tensors of a kwargs structure detached (captured under no_grad, reused with grad)."""
        if isinstance(value, torch.Tensor):
            return value.detach()
        if isinstance(value, tuple | list):
            return type(value)(ModelWalk.detached(v) for v in value)
        if isinstance(value, dict):
            return {k: ModelWalk.detached(v) for k, v in value.items()}
        return value


@dataclass
class RunView:
    """The run as ``prepare`` (full-precision model) and ``on_model_done`` (quantized) see it.

    ``layers`` are the selected layers by name; ``batches`` the calibration
    (input_ids, attention_mask) pairs (empty without calibration);
    ``results`` the layers' results so far; ``moments`` the output-gradient
    moments when the method's Needs ask for them; ``walk`` the model as its
    blocks, one at a time, for a model-level step (set by the engine).
    """

    model: nn.Module
    layers: dict[str, nn.Module]
    batches: list[Batch] = field(default_factory=list)
    results: dict[str, LayerResult] = field(default_factory=dict)
    moments: dict[str, LayerMoments] | None = None
    walk: ModelWalk | None = None
