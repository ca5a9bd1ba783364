"""Block fine-tuning as an engine feature: what a method declares and what it hands over.

A method whose inference layer has continuous parameters (scales, vectors)
opts in with ``Needs(finetune=FineTune(steps, lr))`` and implements
``Method.trainable_layer(result, linear)``: a :class:`TrainableLayer`, a
differentiable twin computing the same output as the method's inference
layer. After a block's layers are quantized (and before ``on_block_done``)
the engine swaps the twins into the block, trains their ``nn.Parameter``\\ s
with Adam + cosine decay so the block's output on the quantized-stream inputs
matches the full-precision block's output, keeps the new results only if the
loss fell, and writes them back (:mod:`onecomp_core.engine.finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .result import LayerResult

#: tokens whose training graph is alive at once (whole sequences of a batch at a time)
TOKENS_PER_BACKWARD = 512


@dataclass(frozen=True)
class FineTune:
    """How the engine fine-tunes each block (declaring it turns on the fp stream).

    ``steps`` Adam steps per block (0 = off: the layer-wise results stand);
    ``lr`` the learning rate a twin's parameters get (see
    :meth:`TrainableLayer.param_groups`); ``tokens_per_step`` calibration
    tokens accumulated per step (whole batches); ``tokens_per_backward`` the
    tokens whose autograd graph is alive at once (a batch runs in pieces of
    whole sequences; the graph is ~0.3 MB a token for a TinyLlama-shape block);
    ``seed`` orders the batches (block i draws with ``seed + i``).
    """

    steps: int
    lr: float
    tokens_per_step: int = 2048
    seed: int = 0
    tokens_per_backward: int = TOKENS_PER_BACKWARD

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"FineTune.steps={self.steps!r}: expected an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"FineTune.lr={self.lr!r}: expected a number > 0")
        if self.tokens_per_step < 1:
            raise ValueError(f"FineTune.tokens_per_step={self.tokens_per_step!r}: expected >= 1")
        if self.tokens_per_backward < 1:
            raise ValueError(
                f"FineTune.tokens_per_backward={self.tokens_per_backward!r}: expected >= 1"
            )

    @property
    def active(self) -> bool:
        return self.steps > 0


class TrainableLayer(nn.Module):
    """A differentiable twin of one quantized layer: same output as its inference layer.

    Subclasses implement ``forward(x)`` (x in the block's dtype; return the
    same dtype) and :meth:`to_result`. Everything registered as an
    ``nn.Parameter`` is trained; fixed tensors (signs, initial scales) are
    buffers, so the engine moves the twin to the compute device with ``.to``.
    """

    def to_result(self) -> LayerResult | None:
        """The result the trained twin stands for (a new object; the original is untouched).

        None keeps the layer's layer-wise result (e.g. trained values not finite).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement to_result()")

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Adam parameter groups (default: every trainable parameter at ``lr``).

        Override to give some parameters another learning rate (e.g. sign latents).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr}] if params else []

    def begin_step(self) -> None:
        """Called before the batches of one optimizer step (default: nothing).

        The parameters do not change until the step, so a twin whose weight is a
        costly function of them (a product of factors) can build it here once, as a
        leaf that gathers the gradients of all the step's batches, instead of once
        per batch with every batch's graph held.
        """

    def end_step(self) -> None:
        """Called after the step's last backward, before the optimizer step (default:
        nothing): hand what :meth:`begin_step` gathered on to the parameters' gradients."""


__all__ = ["FineTune", "TrainableLayer"]
