"""Small rewrites that let generic code handle unusual layer types.

GPT-2 style models use ``transformers.pytorch_utils.Conv1D`` (a Linear with
its weight stored transposed). We turn each into an ``nn.Linear`` holding the
same function, so every quantizer sees the usual (out, in) weight; the saved
model records this, and the loader applies the same rewrite to its skeleton.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - very old transformers
        return None
    return Conv1D


def linearize_conv1d(model: nn.Module) -> int:
    """Replace every Conv1D by an equivalent nn.Linear in place; return how many."""
    conv1d = _conv1d_type()
    if conv1d is None:
        return 0
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, conv1d)]
    for name, module in targets:
        in_features, out_features = module.weight.shape
        meta = module.weight.device.type == "meta"
        linear = nn.Linear(
            in_features,
            out_features,
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        if not meta:
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
        set_submodule(model, name, linear)
    return len(targets)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
