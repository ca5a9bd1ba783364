"""The ``quant_method`` a saved folder is labelled with, and the guard for onecomp's own label.

A folder is labelled with an ecosystem's name (``gptq``) only when it is
exactly that format, so every reader of that name can load it. Everything
else is labelled ``onecomp``: transformers loads it through onecomp's
registration (:mod:`onecomp_core.hf`), which every ``import onecomp_core`` installs.

Without onecomp, transformers (from 4.49) *skips* a ``quant_method`` it does
not know, with a warning, and fills the quantized layers with random
weights. So a ``onecomp`` folder also names, in ``config.json``'s
``transformers_weights`` (the field where transformers reads the name of the
weights file), a sentence that is not a file name: a transformers without
onecomp refuses the folder with its own ``ValueError`` that quotes that
sentence. onecomp's registration removes the field before transformers looks
for the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the label of folders that only onecomp reads
ONECOMP = "onecomp"
#: config.json's field that carries the guard
GUARD_FIELD = "transformers_weights"


def guard(quantization_config: Mapping[str, Any]) -> str:
    """The sentence a transformers without onecomp quotes when it refuses a ``onecomp`` folder."""
    methods = sorted({str(row.get("method")) for row in quantization_config["layers"].values()})
    packages = " ".join(
        ["onecomp-core", *(f"onecomp-{m}" for m in methods if m not in ("rtn", "None"))]
    )
    return (
        f"[this model was quantized by onecomp ({', '.join(methods)}) and needs it to load: "
        f"pip install {packages}, then import onecomp_core before from_pretrained]"
    )


def label_config(config: dict[str, Any], quantization_config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a config.json dict) with ``quantization_config`` and the guard when it needs one."""
    config = {k: v for k, v in config.items() if k != GUARD_FIELD}
    config["quantization_config"] = dict(quantization_config)
    if quantization_config.get("quant_method") == ONECOMP:
        config[GUARD_FIELD] = guard(quantization_config)
    return config
