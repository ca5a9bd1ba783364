"""The dtype of the tensors a saved folder keeps unquantized (embeddings, norms, the head).

A run may compute in float32 (the CPU default), but the tensors it does not
quantize are saved in the checkpoint's own dtype when that is float16 or
bfloat16, and in float16 when the checkpoint is float32: a 4-bit model whose
embeddings stay float32 can be larger than the float16 original. The user may
choose otherwise (``onecomp quantize --save-dtype``). The packed layers'
tensors are never converted: their bits are codes and fp16 grids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

#: what ``--save-dtype`` accepts
SAVE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def choose_save_dtype(checkpoint: Any, override: str | torch.dtype | None = None) -> torch.dtype:
    """``override`` when given, else the ``checkpoint``'s dtype when it is 16-bit, else float16.

    ``checkpoint``: the dtype the original model was saved in (a torch dtype,
    its name, or None when its config records none).
    """
    if override is not None:
        if isinstance(override, torch.dtype) and override in SAVE_DTYPES.values():
            return override
        if isinstance(override, str) and override.removeprefix("torch.") in SAVE_DTYPES:
            return SAVE_DTYPES[override.removeprefix("torch.")]
        raise ValueError(f"save dtype {override!r}: expected one of {', '.join(SAVE_DTYPES)}")
    name = str(checkpoint).removeprefix("torch.") if checkpoint is not None else ""
    return SAVE_DTYPES[name] if name in ("float16", "bfloat16") else torch.float16


def cast_unquantized(model: nn.Module, packed: Iterable[str], dtype: torch.dtype) -> nn.Module:
    """Convert the saved floating tensors outside the ``packed`` layers to ``dtype``, in place.

    Buffers that are not saved keep their dtype. Tied tensors stay tied (each tensor is converted once); the model's config
    records ``dtype``, so a loader builds the model in it.
    """
    packed = set(packed)
    converted: dict[int, torch.Tensor] = {}
    for name, module in model.named_modules():
        if name in packed or any(name.startswith(p + ".") for p in packed):
            continue
        transient = getattr(module, "_non_persistent_buffers_set", set())
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                if store is module._buffers and key in transient:
                    continue  # not saved (rotary frequencies): computed in their own dtype
                if id(tensor) not in converted:
                    new = tensor.detach().to(dtype)
                    if isinstance(tensor, nn.Parameter):
                        new = nn.Parameter(new, requires_grad=False)
                    converted[id(tensor)] = new
                store[key] = converted[id(tensor)]
    config = getattr(model, "config", None)
    if config is not None:
        config.dtype = dtype
    return model


def unquantized_state(
    state: dict[str, torch.Tensor], packed: Iterable[str], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """``state`` with its floating tensors outside the ``packed`` layers in ``dtype``."""
    if dtype is None:
        return state
    prefixes = tuple(p + "." for p in packed)
    return {
        k: t.to(dtype) if t.is_floating_point() and not k.startswith(prefixes) else t
        for k, t in state.items()
    }


def record_dtype(config: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """A config.json dict that records ``dtype`` (under both names transformers has used)."""
    name = str(dtype).removeprefix("torch.")
    config = {**config, "dtype": name}
    if "torch_dtype" in config:
        config["torch_dtype"] = name
    return config
