"""Empty models from a config: the frame that packed layers and saved tensors are put into.

A skeleton is built on the meta device (no memory, no random init), its
layers are replaced by packed ones, and every tensor is then *assigned*
(from a live model or from a saved file), so nothing is copied twice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data.model import is_causal


def skeleton(config_dict: dict[str, Any], model_class: type | None = None) -> nn.Module:
    """The model that ``config_dict`` (a ``config.json``) describes, with meta-device weights.

    ``model_class`` (a transformers model class) is used when given; otherwise the
    config decides between a causal LM and a bare encoder, as when the model was loaded.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.for_model(**config_dict)
    if model_class is None:
        build = (AutoModelForCausalLM if is_causal(config) else AutoModel).from_config
    else:
        build = model_class._from_config
    with init_empty_weights(include_buffers=False):
        return build(config, dtype=config_dtype(config_dict))


def config_dtype(config_dict: dict[str, Any]) -> torch.dtype:
    """The dtype a config.json records (float32 when it records none)."""
    name = config_dict.get("dtype") or config_dict.get("torch_dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def finish(model: nn.Module, config_dict: dict[str, Any]) -> nn.Module:
    """Re-tie embeddings, check that no parameter was left on the meta device, eval mode."""
    if config_dict.get("tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise ValueError(f"these parameters were not in the saved files: {left[:5]}")
    return model.eval()
