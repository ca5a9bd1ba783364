"""Block fine-tuning: train the quantized layers' twins so the block matches its fp output.

Called by the block walk after a block's layers are quantized and before
``on_block_done``, when the method's ``Needs.finetune`` is active. Each
quantized layer the method can make trainable (``Method.trainable_layer``)
is replaced in the block by its twin; every other parameter is frozen; Adam
with cosine decay to 0 minimises the relative squared error between the
block's output on the quantized-stream inputs and the full-precision block's
output on the fp inputs (``BlockView.fp_outputs``). The new results are kept
only when the loss on a fixed monitor set fell; the block itself is left as
it was (the engine writes the kept results back). Memory: one block's twins
and one batch's activations with their graph.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from ..contract import BlockView, FineTune, LayerResult, Method, ModelWalk, TrainableLayer
from ..kernels.training import small_problem_threads, swapped_in

logger = logging.getLogger(__name__)

#: GEMMs below this many multiply-adds run on one thread (a second thread only waits)


def finetune_block(
    method: Method, view: BlockView, spec: FineTune
) -> tuple[dict[str, LayerResult], dict[str, float]]:
    """Fine-tune the trainable layers of ``view.block``: (their new results, loss before/after).

    Empty results when there is nothing to train, no fp outputs, or the loss
    did not improve; ``view`` and its results are never modified.
    """
    if not spec.active or not view.inputs or view.fp_outputs is None:
        return {}, {}
    twins = trainable_twins(method, view)
    if not twins:
        return {}, {}
    view = dataclasses.replace(view, kwargs=[ModelWalk.detached(kw) for kw in view.kwargs])
    first = view.inputs[0]
    with (
        swapped_in(view.block, view.layers, twins),
        small_problem_threads(first.numel() * first.shape[-1]),
    ):
        before, after = train(view, twins, spec)
    what = f"{view.name}: block fine-tuning"
    logger.info("%s loss %.4g → %.4g (%d steps)", what, before, after, spec.steps)
    if not (math.isfinite(after) and after < before):
        logger.warning(
            "%s did not help (%.4g → %.4g); layer-wise results kept", what, before, after
        )
        return {}, {"before": before, "after": before}
    results: dict[str, LayerResult] = {}
    with torch.no_grad():
        for name, twin in twins.items():
            result = twin.to_result()
            if result is None:
                logger.warning(
                    "%s: fine-tuned values unusable; the layer-wise result is kept", name
                )
                continue
            if not result.method:
                result.method = view.results[name].method
            results[name] = result
    return results, {"before": before, "after": after}


def trainable_twins(method: Method, view: BlockView) -> dict[str, TrainableLayer]:
    """The method's twin of every layer of the block that has one, on the block's device."""
    twins = {}
    for name, layer in view.layers.items():
        result = view.results.get(name)
        if result is None:
            continue
        twin = method.trainable_layer(result, layer)
        if twin is not None:
            twins[name] = twin.to(view.device)
    return twins


def adam_with_cosine(
    twins: dict[str, TrainableLayer], steps: int, lr: float
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over every twin's parameter groups, cosine decay to 0 over ``steps``."""
    groups = [g for twin in twins.values() for g in twin.param_groups(lr)]
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    return opt, sched


def block_loss(view: BlockView, index: int) -> torch.Tensor:
    """Relative squared error of the block's output for batch ``index`` against the fp output."""
    out = view.run(index).float()
    target = view.fp_outputs[index].to(view.device).float()
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def mean_loss(view: BlockView, batches: list[int], twins: dict[str, TrainableLayer]) -> float:
    """The mean block loss over ``batches``; the ``twins`` build their weights once for all."""
    with torch.no_grad():
        for twin in twins.values():
            twin.begin_step()
        try:
            return sum(block_loss(view, i).item() for i in batches) / len(batches)
        finally:
            for twin in twins.values():
                twin.end_step()  # nothing to hand on without gradients: frees the weights


def train(view: BlockView, twins: dict[str, TrainableLayer], spec: FineTune) -> tuple[float, float]:
    """``spec.steps`` Adam steps of whole batches (about ``tokens_per_step`` tokens each).

    Returns the mean loss on a fixed monitor set (the first two steps' worth of
    batches) before and after.
    """
    count = len(view.inputs)
    tokens = max(1, view.inputs[0].shape[:-1].numel())
    per_step = max(1, min(count, spec.tokens_per_step // tokens))
    gen = torch.Generator().manual_seed(spec.seed + view.index)
    monitor = list(range(min(count, per_step * 2)))
    before = mean_loss(view, monitor, twins)
    opt, sched = adam_with_cosine(twins, spec.steps, spec.lr)
    order: list[int] = []
    with torch.enable_grad():
        for _ in range(spec.steps):
            opt.zero_grad(set_to_none=True)
            for twin in twins.values():
                twin.begin_step()
            for _ in range(per_step):
                if not order:
                    order = torch.randperm(count, generator=gen).tolist()
                (block_loss(view, order.pop()) / per_step).backward()
            for twin in twins.values():
                twin.end_step()
            opt.step()
            sched.step()
    return before, mean_loss(view, monitor, twins)
