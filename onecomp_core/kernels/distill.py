"""Model-level distillation of trainable twins after the last block, streamed through the blocks.

Block fine-tuning matches each block alone, so the blocks' errors still add
up; this step trains what a method's twins train (scales, sign latents) so
the model's next-token distribution matches the full-precision model's on
the calibration batches (KL(teacher ‖ student), temperature 1). Any method
that makes twins (``Method.trainable_layer``) can use it from its lifecycle
hooks with a :class:`Distiller`: ``prepare`` notes the run's blocks, the
last ``on_block_done`` keeps the full-precision stream after the last block
(the teacher: tokens × hidden per batch), ``on_model_done`` distils.

Never the whole model on one device (the engine's :class:`ModelWalk`): each
Adam step runs one batch forward block by block keeping only the
block-boundary activations, takes the KL at the model's end, then goes
backward block by block recomputing each block from its saved input, a
few sequences at a time (:mod:`.pieces`: one piece's graph alive). A
block's twins and their Adam state sit on the device only while the block
does, and its Adam step is taken right after its backward (the same update
as one optimizer over the model: Adam is per parameter). The host keeps the
teacher, the block-0 inputs and every twin (with sign latents and their Adam
moments: 12 bytes per sign). Generalised from DBF's distillation (plugins/dbf).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from ..contract import BlockView, LayerResult, ModelWalk, RunView
from .on_disk import OnDiskStack
from .pieces import backward_in_pieces, run_in_pieces
from .training import move_optimizer_state, swapped_in

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]
#: the method's ``trainable_layer(result, linear)``: a twin with ``param_groups`` and ``to_result``
MakeTwin = Callable[[LayerResult, nn.Module], nn.Module | None]
#: logits computed at once at the model's end (tokens × vocab): 8 MB in fp32; the KL's
#: temporaries and its backward take several times that
LOGIT_ELEMENTS = 1 << 21


def kl_sum(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over (unmasked) tokens of KL(softmax(teacher) ‖ softmax(student))."""
    log_p = teacher.float().log_softmax(-1)
    log_q = student.float().log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    return per_token.sum() if mask is None else (per_token * mask.to(per_token.dtype)).sum()


def end_kl(
    walk: ModelWalk,
    final: torch.Tensor,
    teacher: torch.Tensor,
    batch: Batch,
    vocab: int,
    grad: torch.Tensor | None = None,
) -> float:
    """Mean KL(teacher ‖ student) of one batch at the model's end; ``grad`` gets d KL/d ``final``.

    ``final`` and ``teacher`` are the student's and the teacher's last-block
    outputs. The end runs on pieces of about :data:`LOGIT_ELEMENTS` logits
    (whole sequences, or a span of one sequence's tokens when a sequence has
    more: the end is per token), so no whole batch of (tokens × vocab) logits
    exists at once. One :meth:`~ModelWalk.end` serves every piece of both
    sides, so a streamed head is read once a batch and held once (an end per
    side held two copies, 2 × 262 MB at TinyLlama's vocabulary). Each
    piece's KL sum is divided by the batch's token count, so the sum is the mean.
    """
    ids, mask = batch
    tokens = ids.numel() if mask is None else int(mask.sum().clamp_min(1))
    backward = grad is not None
    parts = logit_pieces(ids.shape, vocab)
    leaves = [final[part].detach().requires_grad_(backward) for part in parts]
    chunks = [(ids[part], None if mask is None else mask[part]) for part in parts]
    ends = walk.end(
        [t for part, x in zip(parts, leaves, strict=True) for t in (teacher[part], x)],
        [c for c in chunks for _ in range(2)],
    )
    total = 0.0
    for part, x, chunk in zip(parts, leaves, chunks, strict=True):
        with torch.no_grad():
            reference = next(ends)
        with torch.set_grad_enabled(backward):
            logits = next(ends)
            keep = None if chunk[1] is None else chunk[1].to(logits.device)
            loss = kl_sum(logits, reference, keep) / tokens
            if grad is not None:
                grad[part] = torch.autograd.grad(loss, x)[0]
        total += loss.item()
        del reference, logits, loss
    next(ends, None)  # the end runs to completion: the head is released
    return total


def logit_pieces(shape: torch.Size, vocab: int) -> list[tuple[slice, slice]]:
    """(sequences, tokens) ranges of a (sequences × length) batch of about
    :data:`LOGIT_ELEMENTS` logits each: whole sequences, or spans of one sequence."""
    rows, length = shape
    if length * vocab <= LOGIT_ELEMENTS:
        per = LOGIT_ELEMENTS // max(1, length * vocab)
        return [(slice(s, s + per), slice(0, length)) for s in range(0, rows, per)]
    span = max(1, LOGIT_ELEMENTS // max(1, vocab))
    return [
        (slice(s, s + 1), slice(t, t + span)) for s in range(rows) for t in range(0, length, span)
    ]


class Distiller:
    """The lifecycle of a model-level distillation inside a method's hooks (state between them)."""

    def __init__(self) -> None:
        self.blocks: int | None = None
        self.teacher: list[torch.Tensor] | None = None
        self.prepared = False

    def prepare(self, view: RunView, wanted: bool) -> None:
        """Before the first block: note the blocks (no walk with a head: no distillation)."""
        self.blocks, self.teacher, self.prepared = None, None, True
        if not wanted or not view.batches:
            return
        if view.walk is None or not view.walk.has_head:
            logger.warning("the model has no output head to distil from; distillation off")
            return
        self.blocks = len(view.walk)

    @property
    def active(self) -> bool:
        return self.blocks is not None

    def on_block_done(self, view: BlockView) -> None:
        """After the last block: keep its full-precision outputs (the teacher)."""
        if self.blocks is not None and view.index == self.blocks - 1 and view.fp_outputs:
            self.teacher = [h.detach() for h in view.fp_outputs]

    def on_model_done(
        self, view: RunView, make_twin: MakeTwin, steps: int, lr: float, seed: int
    ) -> dict[str, LayerResult]:
        """Distil every layer ``make_twin`` gives a twin; the results it improved (or none)."""
        teacher, self.teacher, self.blocks = self.teacher, None, None
        if teacher is None or not view.batches or view.walk is None or steps <= 0:
            return {}
        results, losses = distill(
            view.walk, view.layers, view.results, view.batches, teacher, make_twin, steps, lr, seed
        )
        logger.info("model distillation KL: %s", losses)
        return results


def distill(
    walk: ModelWalk,
    layers: dict[str, nn.Module],
    results: dict[str, LayerResult],
    batches: list[Batch],
    teacher: list[torch.Tensor],
    make_twin: MakeTwin,
    steps: int,
    lr: float,
    seed: int,
) -> tuple[dict[str, LayerResult], dict[str, float]]:
    """Train the twins of the layers against ``teacher``: (their new results, KL before/after).

    The results are empty when the KL does not fall; the model and
    ``results`` are never modified.
    """
    run = _Run(walk, layers, results, batches, teacher, make_twin, steps, lr)
    if not run.twins:
        return {}, {}
    before, after = run.train(seed)
    logger.info("model distillation KL %.4g → %.4g (%d steps)", before, after, steps)
    if not (math.isfinite(after) and after < before):
        logger.warning("model distillation did not help (%.4g → %.4g); kept", before, after)
        return {}, {"before": before, "after": before}
    out = {}
    with torch.no_grad():
        for name, twin in run.twins.items():
            twin.to("cpu")
            result = twin.to_result()
            if result is None:
                logger.warning("%s: distilled values unusable; the layer keeps its result", name)
                continue
            result.method = result.method or results[name].method
            out[name] = result
    return out, {"before": before, "after": after}


class _Run:
    """The per-block twins and optimizers, and the streamed forward/backward of one batch."""

    def __init__(self, walk, layers, results, batches, teacher, make_twin, steps, lr) -> None:
        self.walk, self.layers, self.batches, self.teacher = walk, layers, batches, teacher
        self.steps, self.device = steps, walk.device
        self.twins: dict[str, nn.Module] = {}
        self.blocks: dict[int, dict[str, nn.Module]] = {}
        self.optimizers = {}
        for index, block_name in enumerate(walk.names):
            own = {}
            for name, result in results.items():
                if name in layers and name.startswith(block_name + "."):
                    twin = make_twin(result, layers[name])
                    if twin is not None:
                        own[name] = twin.to("cpu")
            self.blocks[index] = own
            self.twins.update(own)
            groups = [g for twin in own.values() for g in twin.param_groups(lr)]
            if groups:
                opt = torch.optim.Adam(groups)
                sched = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
                )
                self.optimizers[index] = (opt, sched)
        with torch.no_grad():
            hidden, kwargs = walk.start(batches)
        self.inputs = [h.detach() for h in hidden]
        self.kwargs = [ModelWalk.detached(kw) for kw in kwargs]
        self.vocab = self._vocab()

    def _vocab(self) -> int:
        ids, mask = self.batches[0]
        one = (ids[:1, :1], None if mask is None else mask[:1, :1])
        with torch.no_grad():
            return next(self.walk.end([self.teacher[0][:1, :1]], [one])).shape[-1]

    @contextmanager
    def _in_use(self, index: int):
        """Block ``index`` on the device with its twins swapped in; parked on the CPU after."""
        twins = self.blocks.get(index, {})
        with self.walk.block(index, skip=twins) as block:  # the twins replace those layers
            for twin in twins.values():
                twin.to(self.device)
            if index in self.optimizers:
                move_optimizer_state(self.optimizers[index][0], self.device)
            with swapped_in(block, self.layers, twins):
                yield block
            for twin in twins.values():
                twin.to("cpu")
            if index in self.optimizers:
                move_optimizer_state(self.optimizers[index][0], torch.device("cpu"))

    def _final(self, b: int, keep: OnDiskStack | None) -> torch.Tensor:
        x = self.inputs[b]
        with torch.no_grad():
            for index in range(len(self.walk)):
                if keep is not None:  # on disk until the backward (the first is self.inputs)
                    keep.append(x, aside=index > 0)
                with self._in_use(index) as block:
                    x = run_in_pieces(block, x, self.kwargs[b])
        return x

    def _kl(self, final: torch.Tensor, b: int, grad: torch.Tensor | None = None) -> float:
        """Mean KL of batch ``b`` (:func:`end_kl`); ``grad`` gets d KL / d ``final``."""
        return end_kl(self.walk, final, self.teacher[b], self.batches[b], self.vocab, grad)

    def mean_loss(self, monitor: list[int]) -> float:
        with torch.no_grad():
            return sum(self._kl(self._final(b, None), b) for b in monitor) / len(monitor)

    def step(self, b: int) -> None:
        boundaries = OnDiskStack()
        final = self._final(b, boundaries)
        grad = torch.zeros_like(final)
        self._kl(final, b, grad)
        with torch.enable_grad():
            for index in reversed(range(len(self.walk))):
                with self._in_use(index) as block:  # one piece's graph at a time
                    x = boundaries.pop()
                    grad = backward_in_pieces(block, x, self.kwargs[b], grad, index > 0)
                    if index in self.optimizers:
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
        return before, self.mean_loss(monitor)


__all__ = ["Distiller", "distill", "kl_sum"]
