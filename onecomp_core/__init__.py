"""onecomp-core: post-training quantization of language models, with methods as plugins.

The public names are imported lazily, so ``onecomp plugins`` and plugin
discovery do not pay for loading transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from .hookspecs import hookimpl, hookspec
from .plugins import create_quantizer, get_quantizer, list_quantizers
from .quantizer import Quantizer
from .result import QuantizationResult

_LAZY = {
    "ResultLoader": "result_loader",
    "RTN": "rtn",
    "RTNResult": "rtn",
    "ModelConfig": "model_config",
    "CalibrationConfig": "calibration",
    "Runner": "runner",
    "BlockContext": "blockwise",
    "load_quantized_model": "serialization",
    "calculate_perplexity": "evaluation",
    "calculate_accuracy": "evaluation",
}

__all__ = [
    "Quantizer",
    "QuantizationResult",
    "hookimpl",
    "hookspec",
    "create_quantizer",
    "get_quantizer",
    "list_quantizers",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'onecomp_core' has no attribute {name!r}")
