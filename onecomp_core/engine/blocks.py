"""The repeated blocks of a model, their captured inputs, and true-sequential sub-groups."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .tail import note_output

# -- finding the blocks ------------------------------------------------------------------
KNOWN_BLOCK_PATHS = (
    "model.layers",  # Llama, Qwen, Mistral, Gemma
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "encoder.layer",  # BERT (AutoModel)
    "bert.encoder.layer",  # BERT heads
    "layers",
)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The repeated module list of the decoder or encoder, and its dotted path."""
    modules = dict(model.named_modules())
    for path in KNOWN_BLOCK_PATHS:
        found = modules.get(path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return path, found
    candidates = [
        (sum(p.numel() for p in m.parameters()), name, m)
        for name, m in modules.items()
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1
    ]
    if not candidates:
        raise ValueError(
            f"cannot find the repeated blocks of {type(model).__name__} "
            f"(looked for {', '.join(KNOWN_BLOCK_PATHS)} and any list of identical modules)"
        )
    _, name, found = max(candidates, key=lambda c: c[0])
    return name, found


# -- capturing block-0 inputs ------------------------------------------------------------
class _StopForward(Exception):
    pass


def _hidden_name(block: nn.Module) -> str:
    return next(iter(inspect.signature(block.forward).parameters))


def capture_inputs(
    model: nn.Module,
    first_block: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor | None]],
    device: torch.device,
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Run the model up to block 0 for every batch; return its hidden states and kwargs.

    Positional arguments are turned into keyword arguments through the
    block's signature, so every later call is ``block(hidden, **kwargs)``.
    """
    hidden_name = _hidden_name(first_block)
    signature = inspect.signature(first_block.forward)
    inputs: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []

    def pre_hook(module: nn.Module, args: tuple, kw: dict) -> None:
        bound = signature.bind_partial(*args, **kw).arguments
        inputs.append(bound.pop(hidden_name).detach())
        extra = bound.pop("kwargs", None) or {}
        bound.update(extra)
        bound.pop("past_key_values", None)
        bound.pop("past_key_value", None)
        bound.pop("layer_past", None)
        if "use_cache" in bound:
            bound["use_cache"] = False
        kwargs.append(bound)
        raise _StopForward

    handle = first_block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids, mask in batches:
                call = {"input_ids": ids.to(device)}
                if mask is not None:
                    call["attention_mask"] = mask.to(device)
                if "use_cache" in inspect.signature(model.forward).parameters:
                    call["use_cache"] = False
                try:
                    model(**call)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return inputs, kwargs


def other_tensors(block: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The block's tensors other than the quantized weights (norms, biases)."""
    quantized = {id(m.weight) for m in layers.values()}
    return {k: p for k, p in block.named_parameters() if id(p) not in quantized}


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    return note_output(block, block(hidden, **kwargs))


# -- partial passes: run a block only as far as the layers of interest ---------------------
class StopBlock(Exception):
    """Raised by :class:`StopAfter`'s hook once the last layer of interest was entered."""


class StopAfter:
    """Stops a block's forward as soon as every one of ``modules`` has been entered.

    A sub-group's statistics need only the inputs of its layers; everything
    after them in the block (for q/k/v: attention, o, the whole MLP) would be
    computed for nothing. Register it after the statistics hooks, so theirs
    run first (pre-hooks run in registration order).
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules, self._pending = modules, set()
        self._handles: list = []

    def __enter__(self) -> StopAfter:
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self._pending.discard(id(module))
        if not self._pending:
            raise StopBlock

    def run(
        self,
        block: nn.Module,
        hidden: torch.Tensor,
        kwargs: dict[str, Any],
        only: list[nn.Module] | None = None,
    ) -> None:
        """One batch through ``block`` up to the last of the modules (or ``only``), or its end.

        ``only`` narrows the modules waited for: once q/k/v are known to read one
        tensor, q's statistics serve all three and the pass can stop at q.
        """
        self._pending = {id(m) for m in (self.modules if only is None else only)}
        try:
            block(hidden, **kwargs)
        except StopBlock:
            pass


# -- true-sequential sub-groups ----------------------------------------------------------
def sequential_groups(
    block: nn.Module, layers: dict[str, nn.Module], hidden: torch.Tensor, kwargs: dict[str, Any]
) -> list[list[str]]:
    """The block's layers in execution order, grouped by shared input.

    Layers that read the same input tensor (q/k/v, gate/up) form one group;
    this finds qkv → o → gate/up → down for any architecture, without names.
    """
    order: list[tuple[str, torch.Tensor]] = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            order.append((name, args[0]))  # held, so no later tensor can reuse its memory

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in layers.items()]
    try:
        with torch.no_grad(), StopAfter(list(layers.values())) as stop:
            stop.run(block, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    last_input: torch.Tensor | None = None
    seen: set[str] = set()
    for name, x in order:
        if name in seen:
            continue
        seen.add(name)
        if groups and x is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = x
    unused = [n for n in layers if n not in seen]
    if unused:
        groups.append(unused)
    return groups
