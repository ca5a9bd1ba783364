"""Block fine-tuning: train the quantized layers' twins so the block matches its fp output.

Called by the block walk after a block's layers are quantized and before
``on_block_done``, when the method's ``Needs.finetune`` is active. Each
quantized layer the method can make trainable (``Method.trainable_layer``)
is replaced in the block by its twin; every other parameter is frozen; Adam
with cosine decay to 0 minimises the relative squared error between the
block's output on the quantized-stream inputs and the full-precision block's
output on the fp inputs (``BlockView.fp_outputs``). The new results are kept
only when the loss on a fixed monitor set fell; the twinned layers then hold
their weights. Memory: one block's twins (its dense weights are released
while they train) and the graph of one piece of a batch
(``FineTune.tokens_per_backward`` tokens).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from ..contract import BlockView, FineTune, LayerResult, Method, ModelWalk, TrainableLayer
from ..kernels.pieces import batch_rows, sequence_pieces
from ..kernels.training import small_problem_threads, swapped_in
from ..storage.packed import apply_results, release_weights

logger = logging.getLogger(__name__)


def finetune_block(
    method: Method, view: BlockView, spec: FineTune
) -> tuple[dict[str, LayerResult], dict[str, float]]:
    """Fine-tune the trainable layers of ``view.block``: (their new results, loss before/after).

    Empty results when there is nothing to train, no fp outputs, or the loss
    did not improve; ``view.results`` are never modified. The twinned layers'
    weights are released while training and hold the kept results' weights
    afterwards (fine-tuned or layer-wise), so the caller need not write them.
    """
    if not spec.active or not view.inputs or view.fp_outputs is None:
        return {}, {}
    twins = trainable_twins(method, view)
    if not twins:
        return {}, {}
    view = dataclasses.replace(view, kwargs=[ModelWalk.detached(kw) for kw in view.kwargs])
    results: dict[str, LayerResult] = {}
    release_weights(view.layers, twins)  # a twin never reads its layer's weight
    try:
        losses = _train_and_keep(view, twins, spec, results)
    finally:  # the released layers get what is kept, fine-tuned or layer-wise
        apply_results(
            {n: view.layers[n] for n in twins},
            {n: results.get(n, view.results[n]) for n in twins},
        )
    return results, losses


def _train_and_keep(
    view: BlockView,
    twins: dict[str, TrainableLayer],
    spec: FineTune,
    results: dict[str, LayerResult],
) -> dict[str, float]:
    """Train the twins; fill ``results`` with what they stand for when the loss fell."""
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
        return {"before": before, "after": before}
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
    return {"before": before, "after": after}


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


def batch_loss(view: BlockView, index: int, tokens: int, scale: float | None = None) -> float:
    """Relative squared error of batch ``index``'s block output against its fp output.

    The batch runs in pieces of whole sequences, about ``tokens`` tokens each
    (:func:`sequence_pieces`); each piece's share is ``sum((out − target)²) /
    sum(target²)`` over the whole batch, so the shares add up to the batch's
    ``mean((out − target)²) / mean(target²)``. With ``scale`` each share times
    ``scale`` is backpropagated at once, so one piece's graph is alive at a
    time: a TinyLlama-shape block's graph is ~0.3 MB a token, 0.6 GB for a
    2048-token batch held whole.
    """
    x = view.inputs[index].to(view.device)
    target = view.fp_outputs[index].to(view.device)
    total = target.float().pow(2).sum().clamp_min(1e-12 * target.numel())
    loss = 0.0
    for rows in sequence_pieces(x, tokens):
        kwargs = batch_rows(view.kwargs[index], rows, x.shape[0])
        out = ModelWalk.run(view.block, x[rows], kwargs).float()
        share = (out - target[rows].float()).pow(2).sum() / total
        if scale is not None:
            (share * scale).backward()
        loss += share.item()
    return loss


def mean_loss(
    view: BlockView, batches: list[int], twins: dict[str, TrainableLayer], tokens: int
) -> float:
    """The mean block loss over ``batches``; the ``twins`` build their weights once for all."""
    with torch.no_grad():
        for twin in twins.values():
            twin.begin_step()
        try:
            return sum(batch_loss(view, i, tokens) for i in batches) / len(batches)
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
    before = mean_loss(view, monitor, twins, spec.tokens_per_backward)
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
                batch_loss(view, order.pop(), spec.tokens_per_backward, 1 / per_step)
            for twin in twins.values():
                twin.end_step()
            opt.step()
            sched.step()
    return before, mean_loss(view, monitor, twins, spec.tokens_per_backward)
