"""Perplexity: the project's yardstick (../shared/benchmarks.md).

Tokenize the whole text once (BOS first), cut it into non-overlapping windows
of ``seqlen`` tokens (the last, partial window included), and take exp of the
mean next-token NLL over every predicted token.

A Hugging Face model is evaluated streamed (:mod:`.streamed`): the windows
are embedded, each block runs over all of them while it alone is on the
device, and the model's end turns the last block's outputs into logits. The
numbers equal the whole-model forward's to float rounding; any other module
that maps input_ids to logits is called whole.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .scoring import model_device, token_logprobs
from .streamed import streamed_logprobs


@dataclass
class PerplexityResult:
    """exp(nll) over ``tokens`` predicted tokens in ``windows`` windows."""

    ppl: float
    tokens: int
    nll: float
    windows: int


def read_text(text_or_path: str | os.PathLike[str]) -> str:
    """The text itself, or the contents of the file it names."""
    if isinstance(text_or_path, os.PathLike):
        return Path(text_or_path).read_text(encoding="utf-8")
    if "\n" not in text_or_path and len(text_or_path) < 4096 and Path(text_or_path).is_file():
        return Path(text_or_path).read_text(encoding="utf-8")
    return text_or_path


def calculate_perplexity(
    model: nn.Module,
    tokenizer: Any,
    text_or_path: str | os.PathLike[str],
    seqlen: int = 512,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    show_progress: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on a text by the project protocol (see module docstring).

    ``max_tokens`` keeps only the first tokens of the stream; ``device`` is
    where the blocks run, one at a time (default: where the model is); a
    module that is not a Hugging Face model is moved there whole.
    """
    if seqlen < 2 or batch_size < 1:
        raise ValueError(f"need seqlen >= 2 and batch_size >= 1, got {seqlen} and {batch_size}")
    ids = tokenizer(read_text(text_or_path), return_tensors="pt", verbose=False).input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError(
            f"the evaluation text has {ids.numel()} token(s); perplexity needs at least 2"
        )
    windows = [ids[start : start + seqlen] for start in range(0, ids.numel(), seqlen)]
    if windows[-1].numel() < 2:  # a lone trailing token predicts nothing
        windows.pop()
    full = [w for w in windows if w.numel() == seqlen]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w[None] for w in windows[len(full) :]]

    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for logprobs in _logprobs(model, batches, device, show_progress):
            total_nll -= logprobs.double().sum().item()
            total_tokens += logprobs.numel()
    nll = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(nll), tokens=total_tokens, nll=nll, windows=len(windows))


def _logprobs(model: nn.Module, batches: list[torch.Tensor], device, show: bool):
    """Per batch, the log-probabilities of its next tokens: streamed when the model allows."""
    streamed = streamed_logprobs(model, batches, device, show)
    if streamed is not None:
        yield from streamed
        return
    if device is not None:
        model.to(device)
    device = model_device(model)
    for batch in _progress(batches, show):
        yield token_logprobs(model, batch.to(device))


def _progress(items: list[Any], show: bool) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="perplexity", unit="batch")
