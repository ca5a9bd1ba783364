"""Block-wise fine-tuning of the DBF layers of one block (the hook ``on_block_done``).

After a block's layers are factorized, the three vectors a, c, b of every
DBF layer in it (and, with a sign learning rate, the signs) are optimised
with Adam so that the block's output on the quantized-stream inputs matches
the full-precision block's output. This is the largest single quality gain
of DBF (spec: "Beyond per-layer fitting"). The block is left as it was; the
new results are returned for the engine to write back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from onecomp_core.contract import BlockView

from .result import DBFResult
from .trainable import TrainableDBF, adam_with_cosine, train_twins

#: calibration tokens per Adam step (whole batches are accumulated up to this)
TOKENS_PER_STEP = 2048


def finetune_block(
    view: BlockView,
    steps: int,
    lr: float,
    seed: int,
    sign_lr: float = 0.0,
) -> tuple[dict[str, DBFResult], dict[str, float]]:
    """Fine-tune the DBF layers of ``view.block``: (their new results, loss before/after).

    Needs ``view.fp_outputs``. The results are empty when the loss does not
    improve; ``view`` and its results are never modified.
    """
    if not view.inputs:
        return {}, {}
    view = dataclasses.replace(view, kwargs=[_detached(kw) for kw in view.kwargs])
    return train_twins(
        view.block,
        view.layers,
        view.results,
        view.device,
        sign_lr,
        view.inputs[0].numel() * view.inputs[0].shape[-1],
        f"{view.name}: block fine-tuning",
        lambda twins: _train(view, twins, steps, lr, seed, sign_lr),
    )


def _detached(value: Any) -> Any:
    """Plain (autograd-usable) copies of the tensors in a kwargs structure."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _loss(view: BlockView, index: int) -> torch.Tensor:
    out = view.run(index).float()
    target = view.fp_outputs[index].to(view.device).float()
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def _mean_loss(view: BlockView, batches: list[int]) -> float:
    with torch.no_grad():
        return sum(_loss(view, i).item() for i in batches) / len(batches)


def _train(
    view: BlockView,
    layers: dict[str, TrainableDBF],
    steps: int,
    lr: float,
    seed: int,
    sign_lr: float,
) -> tuple[float, float]:
    count = len(view.inputs)
    tokens = max(1, view.inputs[0].shape[:-1].numel())
    per_step = max(1, min(count, TOKENS_PER_STEP // tokens))
    gen = torch.Generator().manual_seed(seed + view.index)
    monitor = list(range(min(count, per_step * 2)))
    before = _mean_loss(view, monitor)
    opt, sched = adam_with_cosine(layers, steps, lr, sign_lr)
    order: list[int] = []
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            for _ in range(per_step):
                if not order:
                    order = torch.randperm(count, generator=gen).tolist()
                (_loss(view, order.pop()) / per_step).backward()
            opt.step()
            sched.step()
    return before, _mean_loss(view, monitor)
