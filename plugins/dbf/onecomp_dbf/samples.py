"""Text the full-precision model writes itself, sampled through the block walk: distillation data.

The model-level distillation matches the quantized model's next-token
distribution to the full-precision model's. On the calibration text alone it
learns to match the teacher on that text, which may be far from what the
model is for (stories260K, a TinyStories model, calibrated on WikiText). Sequences the
full-precision model samples itself from BOS (temperature 1, no truncation,
seeded, as LLM-QAT's data-free distillation does) are in the model's own
domain and cost no data; :func:`sample_sequences` draws them before any
layer is quantized (in ``prepare``), and :func:`last_hidden` gives the
teacher's last-block outputs on them.

How: a model that sits whole on the compute device (the usual CPU run, or a
GPU run of a model that fits) samples with its own key/value cache (one
token of work per step). Otherwise, never the whole model on one device: each new
token is one pass through the blocks (``ModelWalk``) over the prefix so far
(the walk runs whole blocks, so no cache), about L/2 forwards of the same
sequences for L tokens (stories260K: ≈ 190 s CPU, so only a fallback). Both
draw the same tokens (same private generator, same exponential-race draw), so
a streamed run distils on the same text as an in-memory one.
"""

from __future__ import annotations

import inspect

import torch

from onecomp_core.contract import ModelWalk

Batch = tuple[torch.Tensor, torch.Tensor | None]


def _through_blocks(walk: ModelWalk, batches: list[Batch]) -> list[torch.Tensor]:
    """The last block's output per batch (no gradients), one block on the device at a time."""
    hidden, kwargs = walk.start(batches)
    for index in range(len(walk)):
        with walk.block(index) as block:
            hidden = [ModelWalk.run(block, x, kw) for x, kw in zip(hidden, kwargs, strict=True)]
    return hidden


def resident(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether every weight of ``model`` is on ``device`` (so it may run whole, with a cache)."""
    params = list(model.parameters())
    return bool(params) and all(p.device == device for p in params)


def draw(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from softmax(logits): argmax of p / Exp(1) noise (the exponential race).

    The noise comes from ``gen`` on the host, so both samplers below draw the same
    tokens from the same distributions, whatever device computed them.
    """
    probs = logits.float().softmax(-1).cpu()
    noise = torch.empty_like(probs).exponential_(generator=gen)
    return (probs / noise).argmax(-1, keepdim=True)


def _starts(count: int, bos: int, rows: int) -> list[torch.Tensor]:
    return [
        torch.full((min(rows, count - s), 1), bos, dtype=torch.long) for s in range(0, count, rows)
    ]


@torch.no_grad()
def sample_with_cache(
    model: torch.nn.Module, count: int, length: int, bos: int, seed: int, rows: int
) -> list[Batch]:
    """:func:`sample_sequences` by the whole model with its key/value cache (same tokens).

    One token of work per step; for a model whose weights all sit on one device.
    """
    device = next(model.parameters()).device
    # transformers ≥ 5 names the cache ``cache``; earlier versions ``past_key_values``
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    gen = torch.Generator().manual_seed(seed)
    ids = _starts(count, bos, rows)
    caches: list = [None] * len(ids)
    for _ in range(length - 1):
        for i, x in enumerate(ids):
            step = x if caches[i] is None else x[:, -1:]
            out = model(input_ids=step.to(device), use_cache=True, **{key: caches[i]})
            caches[i] = out[key]
            ids[i] = torch.cat([x, draw(out.logits[:, -1], gen)], 1)
    return [(x, None) for x in ids]


def next_token_logits(walk: ModelWalk, ids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per batch of prefixes (rows × t), the logits of the next token (rows × vocab)."""
    finals = _through_blocks(walk, [(x.to(walk.device), None) for x in ids])
    lasts = [(x[:, -1:].to(walk.device), None) for x in ids]
    return [out[:, -1] for out in walk.end([h[:, -1:] for h in finals], lasts)]


@torch.no_grad()
def sample_sequences(
    walk: ModelWalk, count: int, length: int, bos: int, seed: int, rows: int
) -> list[Batch]:
    """``count`` sequences of ``length`` tokens sampled from ``bos``, in batches of ``rows``.

    Seeded by a private generator (no global RNG state); every batch grows
    one token per pass over the blocks.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = _starts(count, bos, rows)
    for _ in range(length - 1):
        for i, logits in enumerate(next_token_logits(walk, ids)):
            ids[i] = torch.cat([ids[i], draw(logits, gen)], 1)
    return [(x, None) for x in ids]


@torch.no_grad()
def last_hidden(walk: ModelWalk, batches: list[Batch]) -> list[torch.Tensor]:
    """The last block's outputs on ``batches`` (the teacher on the sampled text), on the host."""
    device = [(ids.to(walk.device), None if m is None else m.to(walk.device)) for ids, m in batches]
    return [h.detach().cpu() for h in _through_blocks(walk, device)]
