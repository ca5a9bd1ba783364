"""A finished run as an :class:`~onecomp_core.contract.Artifact`, and writing it in a format.

The artifact is what every save/export format receives: the packed model,
the per-layer table, the ``quantization_config`` saved in ``config.json``,
the tokenizer and the results. Formats are looked up in the registry (the
built-in "hf" folder is registered like any plugin's format).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .. import registry
from ..contract import Artifact, LayerResult, Method
from .atomic import atomic_folder, check_free
from .gptq_config import gptq_keys, writes_gptq_layout
from .hf_folder import FORMAT_VERSION
from .packed import layer_table, packed_model
from .quant_method import ONECOMP
from .save_dtype import cast_unquantized

#: the quant_method every GPTQ consumer (transformers, GPTQModel, vLLM) reads
GPTQ_QUANT_METHOD = "gptq"
#: the quant_method of an output in GPTQ's tensor layout that GPTQ kernels cannot take
#: (transformers loads it through onecomp's registration, and refuses it without onecomp)
OWN_QUANT_METHOD = ONECOMP


def saved_quant_method(method_name: str | type, standard_gptq: bool) -> str:
    """The ``quant_method`` written for an output of ``method_name`` (the one naming rule).

    ``standard_gptq``: the output is GPTQ's layout in shapes every GPTQ kernel
    takes. Everything else is onecomp's own (``onecomp``): transformers loads it
    through onecomp's registration and refuses it without onecomp
    (:mod:`.quant_method`).
    """
    return GPTQ_QUANT_METHOD if standard_gptq else OWN_QUANT_METHOD


def method_of(quantization_config: Mapping[str, Any]) -> str:
    """The onecomp method that wrote a ``quantization_config`` (whatever its quant_method)."""
    return quantization_config.get("method", quantization_config["quant_method"])


def quantization_config(
    method: Method,
    rows: dict[str, dict[str, Any]],
    extra: Mapping[str, Any],
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """The JSON saved as ``config.json``'s ``quantization_config``.

    ``extra``: ``calibration_hash`` (str or None), ``qep`` (the QEP settings
    as a dict, or None when QEP was off), ``conv1d_as_linear`` (bool), ``rotation``
    (the spec :func:`~onecomp_core.transforms.rotation.rotate_model` returned, or None).
    ``model`` (the original or its meta skeleton) tells which Linears of the
    blocks were left out: an output in GPTQ's layout gets the keys GPTQ
    consumers read when their kernels take every layer, else onecomp's own
    quant_method and a one-line notice on stderr saying why.
    """
    saved = method.to_dict()
    standard = False
    if writes_gptq_layout(type(method)):
        keys = gptq_keys(model, rows, saved) if model is not None else "its model is unknown"
        if extra.get("rotation") and not isinstance(keys, str):
            keys = "the model is rotated (only onecomp applies the rotation before down_proj)"
        if not isinstance(keys, str) and keys["checkpoint_format"] == "gptq_v2":
            # measured: GPTQModel 7.6's own loader reads other weights from it, silently
            keys = "its zero points are in the gptq_v2 layout, which GPTQModel's loader misreads"
        if isinstance(keys, str):
            print(
                f"onecomp: saved with quant_method {OWN_QUANT_METHOD!r}, not "
                f"{GPTQ_QUANT_METHOD!r}: {keys}; GPTQ kernels cannot load it (onecomp can)",
                file=sys.stderr,
                flush=True,
            )
        else:
            saved.update(keys)
            standard = True
    config = {
        **saved,
        "quant_method": saved_quant_method(type(method), standard),
        "method": method.method,
        "format_version": FORMAT_VERSION,
        "quantizer": type(method).__name__,
        "layers": rows,
        "calibration_hash": extra.get("calibration_hash"),
    }
    if extra.get("qep") is not None:
        config["qep"] = dict(extra["qep"])
    if extra.get("conv1d_as_linear"):
        config["conv1d_as_linear"] = True
    if extra.get("rotation"):
        config["rotation"] = dict(extra["rotation"])
    return config


def build_artifact(
    model: nn.Module,
    method: Method,
    results: Mapping[str, LayerResult],
    tokenizer: Any,
    extra: Mapping[str, Any],
) -> Artifact:
    """The artifact of a run: ``model`` holds the dequantized weights, ``results`` the layers.

    ``extra`` as for :func:`quantization_config`, and ``save_dtype`` (a torch
    dtype, or None to keep the model's): the dtype of the tensors left unquantized.
    """
    rows = layer_table(model, method, results)
    packed = packed_model(model, method, results, bool(extra.get("conv1d_as_linear")))
    if extra.get("save_dtype") is not None:
        cast_unquantized(packed, rows, extra["save_dtype"])
    return Artifact(
        model=packed,
        rows=rows,
        quantization_config=quantization_config(method, rows, extra, model),
        tokenizer=tokenizer,
        results=dict(results),
    )


def save_quantized_model(
    artifact: Artifact, out_dir: str | Path, overwrite: bool = False, format: str = "hf"
) -> Path:
    """Write ``artifact`` to ``out_dir`` with the registered ``format`` ("hf": a HF folder)."""
    save = registry.get_format(format)
    out = check_free(out_dir, overwrite)
    save(artifact, out)
    return out


def save_dequantized_model(
    model: nn.Module, tokenizer: Any, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """A plain Hugging Face model whose quantized weights hold their dense values."""
    with atomic_folder(out_dir, overwrite) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
