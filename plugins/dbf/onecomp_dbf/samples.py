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
GPU run of a model that fits) samples with its own ``generate`` (key/value
cache: one token of work per step; stories260K, 128 × 256 tokens: ≈ 15 s on
one CPU thread). Otherwise, never the whole model on one device: each new
token is one pass through the blocks (``ModelWalk``) over the prefix so far
(the walk runs whole blocks, so no cache), about L/2 forwards of the same
sequences for L tokens (stories260K: ≈ 190 s CPU, so only a fallback).
"""

from __future__ import annotations

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
    """Whether every weight of ``model`` is on ``device`` (so its own ``generate`` may run)."""
    params = list(model.parameters())
    return bool(params) and all(p.device == device for p in params)


@torch.no_grad()
def generate_sequences(
    model: torch.nn.Module, count: int, length: int, bos: int, seed: int, rows: int
) -> list[Batch]:
    """The same sampling as :func:`sample_sequences` by the model's ``generate`` (cached).

    Seeded through a forked global RNG (``generate`` has no generator argument),
    so the caller's random state is left as it was.
    """
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, count, rows):
            prompt = torch.full((min(rows, count - start), 1), bos, dtype=torch.long, device=device)
            ids = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=length - 1,
                min_new_tokens=length - 1,
                pad_token_id=bos,
                use_cache=True,
            )
            out.append((ids[:, :length].cpu(), None))
    return out


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
    sizes = [min(rows, count - s) for s in range(0, count, rows)]
    ids = [torch.full((n, 1), bos, dtype=torch.long) for n in sizes]
    for _ in range(length - 1):
        for i, logits in enumerate(next_token_logits(walk, ids)):
            probs = logits.float().softmax(-1).cpu()
            ids[i] = torch.cat([ids[i], torch.multinomial(probs, 1, generator=gen)], 1)
    return [(x, None) for x in ids]


@torch.no_grad()
def last_hidden(walk: ModelWalk, batches: list[Batch]) -> list[torch.Tensor]:
    """The last block's outputs on ``batches`` (the teacher on the sampled text), on the host."""
    device = [(ids.to(walk.device), None if m is None else m.to(walk.device)) for ids, m in batches]
    return [h.detach().cpu() for h in _through_blocks(walk, device)]
