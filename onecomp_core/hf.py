"""onecomp's quantization method in transformers' registry: ``from_pretrained`` loads every output.

transformers looks a saved ``quantization_config`` up by its ``quant_method``
in a public registry (``register_quantization_config`` / ``register_quantizer``).
onecomp registers its own label, ``onecomp`` (:mod:`.storage.quant_method`),
with a quantizer that builds each quantized layer exactly as
:func:`~onecomp_core.load_quantized_model` does: the method named in the
layer's row of the saved table makes the empty module (``empty_layer(row)``),
so every method, a third-party plugin's included, loads without code here.
transformers then reads the tensors into those modules.

``import onecomp_core`` registers it without importing transformers itself
(which would slow every command down): :func:`register` runs when
transformers' quantizer registry is first imported, or at once when it
already is (:mod:`.import_hook`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.quantizers.auto import (
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .storage.hf_folder import put_empty_layers
from .storage.quant_method import GUARD_FIELD, ONECOMP
from .storage.verify import layer_problems


class OnecompConfig(QuantizationConfigMixin):
    """The saved ``quantization_config`` of a onecomp folder, kept whole (the table included)."""

    def __init__(self, **config: Any) -> None:
        layers = config.get("layers")
        if not isinstance(layers, dict):
            raise ValueError(
                "quantization_config with quant_method 'onecomp' has no per-layer table "
                "('layers'): the folder is damaged or not written by onecomp"
            )
        self.__dict__.update(config)
        self.quant_method = ONECOMP

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class OnecompQuantizer(HfQuantizer):
    """Loads a onecomp folder: the table's layers become their methods' empty modules."""

    requires_calibration = True  # loads saved models only; it does not quantize

    def update_attn_implementation(self, config: Any) -> Any:
        """Called before transformers looks for the weights: remove the guard that makes a
        transformers without onecomp refuse the folder (:mod:`.storage.quant_method`)."""
        name = getattr(config, GUARD_FIELD, None)
        if isinstance(name, str) and not name.endswith((".safetensors", ".safetensors.index.json")):
            delattr(config, GUARD_FIELD)
        return config

    def _process_model_before_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> None:
        source = f"{getattr(model.config, 'name_or_path', '') or 'the model'}/config.json"
        put_empty_layers(model, self.quantization_config.to_dict(), source)

    def _process_model_after_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> None:
        rows = self.quantization_config.layers
        missing = [
            f"{name}.{key}"
            for name in rows
            for key, tensor in model.get_submodule(name).state_dict().items()
            if tensor.device.type == "meta"
        ]
        problems = layer_problems(model, rows) if not missing else [f"missing: {missing[:5]}"]
        if problems:
            raise ValueError(
                f"{model.config.name_or_path}: saved tensors do not fit the model: "
                + "; ".join(problems)
            )

    def is_serializable(self, safe_serialization: Any = None) -> bool:
        # transformers' save drops the guard field; onecomp's own save keeps it
        return False

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Put onecomp's config and quantizer into transformers' registry (once)."""
    if ONECOMP in AUTO_QUANTIZER_MAPPING:
        return
    register_quantization_config(ONECOMP)(OnecompConfig)
    register_quantizer(ONECOMP)(OnecompQuantizer)
