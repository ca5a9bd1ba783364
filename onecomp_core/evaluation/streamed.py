"""Next-token log-probabilities computed block by block, never the whole model on one device.

The evaluation windows are embedded once; then each block, alone on the
device, runs over every window before the next block is brought in; the
model's end (final norm, head) turns the last block's outputs into logits
one batch at a time. Windows are taken in chunks of at most
:data:`CHUNK_TOKENS` tokens, so the activations kept between blocks stay
bounded however long the text is (each chunk walks the blocks once).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..engine import blocks as blockwise
from ..engine.model_walk import Walk
from .scoring import model_device, next_token_logprobs

#: tokens of evaluation windows whose activations are kept between blocks at once
CHUNK_TOKENS = 65536


def walkable(model: nn.Module) -> bool:
    """A Hugging Face model whose repeated blocks can be found."""
    if not hasattr(model, "config") or not hasattr(model, "get_output_embeddings"):
        return False
    try:
        blockwise.find_blocks(model)
    except ValueError:
        return False
    return isinstance(model.get_output_embeddings(), nn.Module)


def streamed_logprobs(
    model: nn.Module,
    batches: list[torch.Tensor],
    device: str | torch.device | None,
    show_progress: bool = False,
) -> Iterator[torch.Tensor] | None:
    """Per batch of (B, L) windows, (B, L-1) log-probabilities; None if ``model`` is not walkable."""
    if not walkable(model):
        return None
    return _walk(
        model, batches, torch.device(device) if device else model_device(model), show_progress
    )


def _chunks(batches: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    chunk: list[torch.Tensor] = []
    tokens = 0
    for batch in batches:
        if chunk and tokens + batch.numel() > CHUNK_TOKENS:
            yield chunk
            chunk, tokens = [], 0
        chunk.append(batch)
        tokens += batch.numel()
    if chunk:
        yield chunk


def _walk(
    model: nn.Module, batches: list[torch.Tensor], device: torch.device, show: bool
) -> Iterator[torch.Tensor]:
    walk = Walk(model, device)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches) * len(walk), desc="perplexity", unit="block·batch")
    try:
        for chunk in _chunks(batches):
            pairs = [(ids, None) for ids in chunk]
            hidden, kwargs = walk.start(pairs)
            for index in range(len(walk)):
                with walk.block(index) as block, _cached_weights(block):
                    hidden = [
                        blockwise.run_block(block, x, kw)
                        for x, kw in zip(hidden, kwargs, strict=True)
                    ]
                if bar is not None:
                    bar.update(len(chunk))
            for logits, ids in zip(walk.end(hidden, pairs), chunk, strict=True):
                yield next_token_logprobs(logits, ids.to(logits.device))
    finally:
        walk.close()
        if bar is not None:
            bar.close()


class _cached_weights:  # noqa: N801 - used as a context manager
    """Packed layers unpack their weight once per block visit (every window of the chunk)."""

    def __init__(self, block: nn.Module) -> None:
        self.layers = [m for m in block.modules() if hasattr(m, "cache_weight")]

    def __enter__(self) -> None:
        self.flags = [m.cache_weight for m in self.layers]
        for m in self.layers:
            m.cache_weight = True

    def __exit__(self, *exc: object) -> None:
        for m, flag in zip(self.layers, self.flags, strict=True):
            m.cache_weight = flag
            if hasattr(m, "_cached"):
                m._cached = None  # the dense copy goes with the block
