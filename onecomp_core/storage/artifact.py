"""A finished run as an :class:`~onecomp_core.contract.Artifact`, and writing it in a format.

The artifact is what every save/export format receives: the packed model,
the per-layer table, the ``quantization_config`` saved in ``config.json``,
the tokenizer and the results. Formats are looked up in the registry (the
built-in "hf" folder is registered like any plugin's format).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .. import registry
from ..contract import Artifact, LayerResult, Method
from .atomic import atomic_folder, check_free
from .hf_folder import FORMAT_VERSION
from .packed import layer_table, packed_model
from .quant_method import checkpoint_quant_method
from .save_dtype import cast_unquantized


def quantization_config(
    method: Method, rows: dict[str, dict[str, Any]], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON saved as ``config.json``'s ``quantization_config``.

    ``extra``: ``calibration_hash`` (str or None), ``qep`` (the QEP settings
    as a dict, or None when QEP was off), ``conv1d_as_linear`` (bool), ``rotation``
    (the spec :func:`~onecomp_core.transforms.rotation.rotate_model` returned, or None).
    """
    config = {
        **method.to_dict(),
        "quant_method": checkpoint_quant_method(method.method, rows),
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
        quantization_config=quantization_config(method, rows, extra),
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
