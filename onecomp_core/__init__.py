"""onecomp-core: post-training quantization of language models, with methods as plugins.

Plugin authors import :mod:`onecomp_core.contract` (and :mod:`onecomp_core.kernels`).
Users import the names below; they are loaded lazily, so ``onecomp plugins`` and
plugin discovery do not pay for loading transformers. The registry itself is
imported here (it loads no plugin yet), so that every method, a plugin's
included, can find the others by name through ``Method.named``.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import registry as _registry  # noqa: F401  (installs Method.named / Method.create)
from .import_hook import after_import as _after_import


def _register_with_transformers() -> None:
    from .hf import register

    register()


# transformers' from_pretrained loads onecomp folders once onecomp_core is imported (see .hf)
_after_import("transformers.quantizers.auto", _register_with_transformers)

_LAZY = {
    # the contract
    "Method": "contract",
    "LayerResult": "contract",
    "hookimpl": "contract",
    # the registry (seed names first)
    "create_quantizer": ("registry", "create_method"),
    "get_quantizer": ("registry", "get_method"),
    "list_quantizers": ("registry", "list_methods"),
    "create_method": "registry",
    "get_method": "registry",
    # the seed API
    "Quantizer": "seed_api",
    "QuantizationResult": "seed_api",
    "Runner": "seed_api",
    "ResultLoader": "seed_api",
    "save_results": "seed_api",
    "load_results": "seed_api",
    "apply_results_to_model": "seed_api",
    "QEPConfig": "engine.qep",
    "RTN": "rtn",
    "RTNResult": "rtn",
    "ModelConfig": "data.model",
    "CalibrationConfig": "data.calibration",
    "load_quantized_model": "storage.hf_folder",
    "calculate_perplexity": "evaluation",
    "calculate_accuracy": "evaluation",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        where = _LAZY[name]
        module, attr = where if isinstance(where, tuple) else (where, name)
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'onecomp_core' has no attribute {name!r}")
