"""The model's end — what runs after the last block — applied to the last block's outputs.

Layers outside the blocks (a selected ``lm_head``), a distillation teacher and
a streamed evaluation all need "final norm, then head" of hidden states the
walk already computed. Finding those modules by name breaks on the first
architecture that does something in between (Gemma's logit soft-capping,
OPT's ``project_out``), so the model's own ``forward`` is run instead, with
every block replaced by a pass-through that returns the given hidden state:
the blocks cost nothing, everything after them runs exactly as written.

The blocks are not touched (their weights may be on the meta device); the
modules after them must be on ``device``. The input embedding is skipped
when the model accepts ``inputs_embeds``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from ..contract.views import TUPLE_OUTPUT as _TUPLE_OUTPUT
from ..contract.views import first_output

Batch = tuple[torch.Tensor, torch.Tensor | None]


def note_output(block: nn.Module, output: Any) -> torch.Tensor:
    """Record how ``block``'s class returns its hidden state; return that hidden state."""
    _TUPLE_OUTPUT[type(block)] = isinstance(output, tuple | list)
    return first_output(output)


class _Stop(Exception):
    pass


def _returns_tuple(block: nn.Module) -> bool:
    known = _TUPLE_OUTPUT.get(type(block))
    if known is None:
        raise RuntimeError(
            f"run one {type(block).__name__} block through engine.blocks.run_block "
            "before applying the model's end (its output structure is not known yet)"
        )
    return known


@contextmanager
def _pass_through(blocks: nn.ModuleList, hidden: torch.Tensor, as_tuple: bool) -> Iterator[None]:
    """Every block returns ``hidden`` (the last block's output) without computing anything."""
    result = (hidden,) if as_tuple else hidden

    def forward(*args: Any, **kwargs: Any) -> Any:
        return result

    own = [block.__dict__.get("forward") for block in blocks]  # e.g. an accelerate hook
    for block in blocks:
        block.forward = forward
    try:
        yield
    finally:
        for block, previous in zip(blocks, own, strict=True):
            if previous is None:
                del block.forward  # back to the class's forward
            else:
                block.forward = previous


def run_end(
    model: nn.Module,
    blocks: nn.ModuleList,
    finals: list[torch.Tensor],
    batches: list[Batch],
    device: torch.device,
    *,
    want: Literal["head_input", "logits"] = "logits",
) -> Iterator[torch.Tensor]:
    """For each batch, the model's end applied to ``finals[i]`` (the last block's output).

    ``want="head_input"`` stops at the output head and yields its input (after
    the final norm); ``"logits"`` yields the model's logits (or, for a model
    without a head, its last hidden state). One batch at a time, so only one
    batch's logits exist at once.
    """
    as_tuple = _returns_tuple(blocks[0])
    parameters = inspect.signature(model.forward).parameters
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for hidden, (ids, mask) in zip(finals, batches, strict=True):
        hidden = hidden.to(device)
        call: dict[str, Any] = {}
        if "inputs_embeds" in parameters:
            call["inputs_embeds"] = torch.zeros_like(hidden)
        else:
            call["input_ids"] = ids.to(device)
        if mask is not None:
            call["attention_mask"] = mask.to(device)
        if "use_cache" in parameters:
            call["use_cache"] = False
        with _pass_through(blocks, hidden, as_tuple):
            out = _one(model, head, call, want)
        yield out


def _one(model: nn.Module, head: nn.Module | None, call: dict, want: str) -> torch.Tensor:
    if want == "head_input" and isinstance(head, nn.Module):
        seen: list[torch.Tensor] = []

        def stop(_module: nn.Module, args: tuple) -> None:
            seen.append(args[0])
            raise _Stop

        handle = head.register_forward_pre_hook(stop)
        try:
            model(**call)
        except _Stop:
            return seen[0]
        finally:
            handle.remove()
        raise RuntimeError(f"{type(model).__name__}.forward never called its output head")
    output = model(**call)
    logits = getattr(output, "logits", None)
    if logits is not None and want == "logits":
        return logits
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
