"""Model-level distillation of the DBF vectors after the last block.

Block fine-tuning matches each block's output in isolation; the errors of
the five (or fifty) blocks still add up. Once every layer is factorized,
this step trains the scale vectors of every DBF layer of the whole model
(and, through the straight-through estimator, the signs) so the model's
next-token distribution matches the full-precision model's on the
calibration batches (KL(teacher ‖ student), temperature 1). The model is
left as it was; the new results are returned for the engine to write back.

The teacher is recorded by :class:`TeacherRecorder` in ``prepare()``, while
the model is still full precision: the inputs of the output head (one
(tokens × hidden) tensor per batch, far smaller than the logits) plus a
frozen copy of the head, so teacher logits are recomputed per step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .result import DBFResult
from .trainable import TrainableDBF, adam_with_cosine, train_twins


class TeacherRecorder:
    """The full-precision model's head inputs on the calibration batches, and a copy of the head."""

    def __init__(self) -> None:
        self.hidden: list[torch.Tensor] = []
        self.head: nn.Module | None = None

    @torch.no_grad()
    def record(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> bool:
        """Run ``model`` on every batch; False (nothing kept) if it has no output head."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(head, nn.Module) or not batches:
            return False
        seen: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            device = next(model.parameters()).device
            for ids, mask in batches:
                mask = None if mask is None else mask.to(device)
                model(input_ids=ids.to(device), attention_mask=mask, use_cache=False)
        finally:
            handle.remove()
        self.hidden = [h.float().cpu() for h in seen]
        self.head = copy.deepcopy(head).float().requires_grad_(False)
        return len(self.hidden) == len(batches)

    def logits(self, index: int, device: torch.device | None = None) -> torch.Tensor:
        return self.head.to(device or "cpu")(self.hidden[index].to(device or "cpu"))


def kl_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over (unmasked) tokens of KL(softmax(teacher) ‖ softmax(student))."""
    log_p = teacher.float().log_softmax(-1)
    log_q = student.float().log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    if mask is None:
        return per_token.mean()
    weight = mask.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp_min(1)


def distill_model(
    model: nn.Module,
    layers: dict[str, nn.Module],
    results: dict[str, DBFResult],
    batches: list[tuple[torch.Tensor, torch.Tensor | None]],
    teacher: TeacherRecorder,
    steps: int,
    lr: float,
    sign_lr: float,
    seed: int,
) -> tuple[dict[str, DBFResult], dict[str, float]]:
    """Train the DBF layers of ``model`` against ``teacher``: (their new results, KL before/after).

    ``layers`` maps names to the model's Linear modules (dequantized weights
    written in) and ``results`` to their results. The results are empty when
    the KL does not improve; the model and ``results`` are never modified.
    """
    if not batches or steps <= 0:
        return {}, {}
    hidden = teacher.hidden[0].shape[-1]
    return train_twins(
        model,
        layers,
        results,
        next(model.parameters()).device,
        sign_lr,
        teacher.hidden[0].shape[:-1].numel() * hidden * hidden,
        "model distillation KL",
        lambda twins: _train(model, twins, batches, teacher, steps, lr, sign_lr, seed),
    )


def _batch_loss(model: nn.Module, batches, teacher: TeacherRecorder, index: int) -> torch.Tensor:
    ids, mask = batches[index]
    device = next(model.parameters()).device
    logits = model(
        input_ids=ids.to(device),
        attention_mask=None if mask is None else mask.to(device),
        use_cache=False,
    ).logits
    with torch.no_grad():
        target = teacher.logits(index, device)
    return kl_loss(logits, target, None if mask is None else mask.to(device))


def _train(
    model: nn.Module,
    layers: dict[str, TrainableDBF],
    batches,
    teacher: TeacherRecorder,
    steps: int,
    lr: float,
    sign_lr: float,
    seed: int,
) -> tuple[float, float]:
    count = len(batches)
    gen = torch.Generator().manual_seed(seed + 7919)
    monitor = list(range(min(count, 2)))

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(_batch_loss(model, batches, teacher, i).item() for i in monitor) / len(
                monitor
            )

    was_training = model.training
    model.eval()  # no dropout: the teacher ran in eval mode too
    before = mean_loss()
    opt, sched = adam_with_cosine(layers, steps, lr, sign_lr)
    order: list[int] = []
    with torch.enable_grad():
        for _ in range(steps):
            if not order:
                order = torch.randperm(count, generator=gen).tolist()
            opt.zero_grad(set_to_none=True)
            _batch_loss(model, batches, teacher, order.pop()).backward()
            opt.step()
            sched.step()
    after = mean_loss()
    model.train(was_training)
    return before, after
