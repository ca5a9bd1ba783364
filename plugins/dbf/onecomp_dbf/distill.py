"""Model-level distillation of the DBF vectors after the last block, streamed through the blocks.

Block fine-tuning matches each block's output in isolation; the errors of
the five (or fifty) blocks still add up. Once every layer is factorized,
this step trains the scale vectors of the DBF layers (and, through the
straight-through estimator, the signs) so the model's next-token
distribution matches the full-precision model's on the calibration batches
(KL(teacher ‖ student), temperature 1).

Never the whole model on one device: each Adam step runs one batch forward
block by block (:class:`~onecomp_core.contract.ModelWalk`), keeping only the
block-boundary activations, takes the KL at the model's end, then goes
backward block by block, recomputing each block from its saved input
(activation checkpointing at block granularity) a few sequences at a time
(:func:`~onecomp_core.kernels.backward_in_pieces`: one piece's graph alive).
A block's trainable state (vectors, sign latents, Adam moments) is on the
device only while the block is; its Adam step is taken right after its
backward, which is the same update as one optimizer over the whole model
(Adam is per parameter).

``last_blocks`` gives the block-local variant: only the last N blocks train,
from their inputs computed once, so a step costs N blocks, not the model.

The teacher is the engine's full-precision stream after the last block
(:class:`Teacher`, recorded in ``on_block_done``): per batch the fp model's
last hidden states before the final norm; teacher logits are recomputed per
step through the model's end, so no (tokens × vocab) tensor is kept.
"""

from __future__ import annotations

import logging
import math

import torch

from onecomp_core.contract import ModelWalk
from onecomp_core.kernels import (
    OnDiskStack,
    backward_in_pieces,
    end_kl,
    kl_sum,
    move_optimizer_state,
    run_in_pieces,
    small_problem_threads,
    swapped_in,
)

from .config import SIGN_STATE_MB
from .result import DBFResult
from .trainable import TrainableDBF, adam_with_cosine, kept, sign_state_bytes, trained_results

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]


class Teacher:
    """The full-precision model's last-block outputs (the fp stream after the last block)."""

    def __init__(self, hidden: list[torch.Tensor]) -> None:
        self.hidden = [h.detach() for h in hidden]


def kl_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over (unmasked) tokens of KL(softmax(teacher) ‖ softmax(student))."""
    if mask is None:
        return kl_sum(student, teacher) / student.shape[:-1].numel()
    return kl_sum(student, teacher, mask) / mask.sum().clamp_min(1)


def distill_model(
    walk: ModelWalk,
    layers: dict[str, torch.nn.Module],
    results: dict[str, DBFResult],
    batches: list[Batch],
    teacher: Teacher,
    steps: int,
    lr: float,
    sign_lr: float,
    seed: int,
    last_blocks: int | None = None,
    sign_budget: int = SIGN_STATE_MB << 20,
) -> tuple[dict[str, DBFResult], dict[str, float]]:
    """Train the DBF layers against ``teacher``: (their new results, KL before/after).

    ``layers`` maps names to the model's Linear modules (dequantized weights
    written in) and ``results`` to their results. The results are empty when
    the KL does not improve; the model and ``results`` are never modified.
    Above ``sign_budget`` bytes of sign-training state (every trained block's,
    kept between uses) the signs stay fixed: a one-line warning.
    """
    if not batches or steps <= 0:
        return {}, {}
    first = 0 if last_blocks is None else max(0, len(walk) - last_blocks)
    trained = {
        n: r
        for n, r in results.items()
        if n in layers and any(n.startswith(b + ".") for b in walk.names[first:])
    }
    if sign_lr > 0 and sign_state_bytes(trained) > sign_budget:
        logger.warning(
            "DBF distillation: training the signs would keep %.0f MB (sign_state_mb=%.0f); "
            "training the vectors only",
            sign_state_bytes(trained) / 2**20,
            sign_budget / 2**20,
        )
        sign_lr = 0.0
    run = _Distillation(walk, layers, trained, batches, teacher, first, steps, lr, sign_lr)
    if not run.twins:
        return {}, {}
    hidden = teacher.hidden[0]
    with small_problem_threads(hidden.shape[:-1].numel() * hidden.shape[-1] ** 2):
        before, after = run.train(seed)
    if not kept(before, after, "model distillation KL"):
        return {}, {"before": before, "after": before}
    # the twins are parked on the CPU: a result needs their vectors (and trained signs) only,
    # so fixed signs stay packed (unpacked, every block's at once: 1 byte a sign, ~63 MB a
    # TinyLlama-shape block at 1.5 bits)
    return trained_results(trained, run.twins), {"before": before, "after": after}


class _Distillation:
    """The per-block trainable state and the streamed forward/backward of one batch."""

    def __init__(
        self,
        walk: ModelWalk,
        layers: dict[str, torch.nn.Module],
        results: dict[str, DBFResult],
        batches: list[Batch],
        teacher: Teacher,
        first: int,
        steps: int,
        lr: float,
        sign_lr: float,
    ) -> None:
        self.walk, self.layers, self.batches, self.teacher = walk, layers, batches, teacher
        self.first, self.device = first, walk.device
        self.vocab = _vocab(walk, teacher, batches[0])
        self.twins: dict[str, TrainableDBF] = {}
        self.blocks: dict[int, dict[str, TrainableDBF]] = {}
        for index in range(first, len(walk)):
            prefix = walk.names[index] + "."
            names = [n for n, r in results.items() if n.startswith(prefix) and r.is_dbf_quantized]
            own = {}
            if names:
                with walk.block(index):  # a streamed block's biases are only there while in use
                    own = {
                        n: TrainableDBF(
                            results[n], getattr(layers[n], "bias", None), self.device, sign_lr > 0
                        )
                        for n in names
                    }
            for twin in own.values():
                twin.park("cpu")
            self.twins.update(own)
            self.blocks[index] = own
        self.optimizers = {
            i: adam_with_cosine(own, steps, lr, sign_lr) for i, own in self.blocks.items() if own
        }
        self.steps = steps
        with torch.no_grad():
            hidden, kwargs = walk.start(batches)
            for index in range(first):
                with walk.block(index) as block:
                    hidden = [
                        ModelWalk.run(block, x, kw) for x, kw in zip(hidden, kwargs, strict=True)
                    ]
        self.inputs = [h.detach() for h in hidden]
        self.kwargs = [ModelWalk.detached(kw) for kw in kwargs]

    # -- one block in use ----------------------------------------------------------------------
    def _in_use(self, index: int):
        return _BlockInUse(self, index)

    # -- the loss ----------------------------------------------------------------------------------
    def _final(self, b: int, keep: OnDiskStack | None) -> torch.Tensor:
        """Batch ``b`` through the trained blocks without gradients; ``keep`` gets the inputs."""
        x = self.inputs[b]
        with torch.no_grad():
            for index in range(self.first, len(self.walk)):
                if keep is not None:  # on disk until the backward (the first is self.inputs)
                    keep.append(x, aside=index > self.first)
                with self._in_use(index) as block:
                    x = run_in_pieces(block, x, self.kwargs[b])
        return x

    def _kl(self, final: torch.Tensor, b: int, grad: torch.Tensor | None = None) -> float:
        """KL of batch ``b`` at the model's end (the kernels' chunked :func:`end_kl`, one head
        read a chunk); ``grad`` (if given) gets d KL / d ``final``."""
        hidden = self.teacher.hidden[b]
        return end_kl(self.walk, final, hidden, self.batches[b], self.vocab, grad)

    def mean_loss(self, monitor: list[int]) -> float:
        with torch.no_grad():
            return sum(self._kl(self._final(b, None), b) for b in monitor) / len(monitor)

    # -- one step: streamed forward, loss at the end, backward block by block ----------------------
    def step(self, b: int, update: bool = True) -> None:
        """One Adam step on batch ``b`` (``update=False``: only leave the gradients)."""
        boundaries = OnDiskStack()
        final = self._final(b, boundaries)
        grad = torch.zeros_like(final)
        self._kl(final, b, grad)
        with torch.enable_grad():
            for index in reversed(range(self.first, len(self.walk))):
                with self._in_use(index) as block:  # one piece's graph at a time
                    x = boundaries.pop()
                    grad = backward_in_pieces(block, x, self.kwargs[b], grad, index > self.first)
                    if update and index in self.optimizers:
                        opt, sched = self.optimizers[index]
                        opt.step()
                        sched.step()
                        opt.zero_grad(set_to_none=True)

    def train(self, seed: int) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(seed + 7919)
        monitor = list(range(min(len(self.batches), 2)))
        before = self.mean_loss(monitor)
        order: list[int] = []
        for _ in range(self.steps):
            if not order:
                order = torch.randperm(len(self.batches), generator=gen).tolist()
            self.step(order.pop())
        after = self.mean_loss(monitor)
        if not math.isfinite(after):
            logger.warning("DBF distillation: the KL is not finite after training")
        return before, after


class _BlockInUse:
    """Block ``index`` on the device with its twins swapped in; released (and parked) after."""

    def __init__(self, run: _Distillation, index: int) -> None:
        self.run, self.index = run, index
        self.twins = run.blocks.get(index, {})

    def __enter__(self) -> torch.nn.Module:
        run = self.run
        self._block = run.walk.block(self.index, skip=self.twins)  # twins replace them
        block = self._block.__enter__()
        for twin in self.twins.values():
            twin.unpark(run.device)
        if self.index in run.optimizers:
            move_optimizer_state(run.optimizers[self.index][0], run.device)
        self._swap = swapped_in(block, run.layers, self.twins)
        self._swap.__enter__()
        return block

    def __exit__(self, *exc: object) -> None:
        run = self.run
        self._swap.__exit__(*exc)
        for twin in self.twins.values():
            twin.park("cpu")
        if self.index in run.optimizers:
            move_optimizer_state(run.optimizers[self.index][0], torch.device("cpu"))
        self._block.__exit__(*exc)


def _vocab(walk: ModelWalk, teacher: Teacher, batch: Batch) -> int:
    """The width of the logits (one token through the model's end)."""
    ids, mask = batch
    one = (ids[:1, :1], None if mask is None else mask[:1, :1])
    with torch.no_grad():
        return next(walk.end([teacher.hidden[0][:1, :1]], [one])).shape[-1]
