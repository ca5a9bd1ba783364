"""Standard GPTQ checkpoints written by other tools, read as onecomp folders.

transformers (with optimum) and GPTQModel save a GPTQ model as a
``quantization_config`` (``quant_method: "gptq"``, ``bits``, ``group_size``,
``desc_act``, ``sym``, ``checkpoint_format``; maybe ``dynamic`` per-layer
overrides and ``modules_in_block_to_quantize``) and, per quantized layer,
``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` (and ``bias``). onecomp's
GPTQ layers hold exactly that layout, so such a folder loads once its config
is mapped to onecomp's per-layer table: every module saved with a ``qweight``
is a row, with the config's settings overridden by the first ``dynamic``
pattern that matches its name (GPTQModel's convention: ``+:regex`` or a bare
regex overrides, ``-:regex`` leaves a module unquantized), and the shapes
read from the tensor headers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: the zero-point conventions onecomp's GPTQ layer reads ("gptq": v1, zero − 1 stored)
FORMATS = ("gptq", "gptq_v2")
#: the bit widths of the GPTQ layout
GPTQ_BITS = (2, 3, 4, 8)
#: ``dynamic`` override keys → the row's names
_OVERRIDES = {"bits": "bits", "group_size": "groupsize", "sym": "sym", "desc_act": "desc_act"}


def is_standard_gptq(qc: Mapping[str, Any]) -> bool:
    """Whether ``qc`` is another tool's GPTQ ``quantization_config`` (no onecomp table)."""
    return str(qc.get("quant_method", "")).lower() == "gptq" and "layers" not in qc


def gptq_table(
    qc: Mapping[str, Any], shapes: Mapping[str, tuple[list[int], str]], where: str
) -> dict[str, Any]:
    """``qc`` with onecomp's per-layer table (``layers``) built from it and the tensor ``shapes``.

    ``shapes``: tensor name → (shape, safetensors dtype) of every saved tensor;
    ``where`` names the config in errors. Unreadable settings fail in one line.
    """
    base = _settings(qc, where)
    dynamic = qc.get("dynamic") or {}
    if not isinstance(dynamic, dict):
        raise ValueError(f"{where}: quantization_config.dynamic must be an object of patterns")
    rows = {}
    for key, (shape, _) in shapes.items():
        if not key.endswith(".qweight"):
            continue
        name = key[: -len(".qweight")]
        settings = {**base, **_override(name, dynamic, where)}
        g_idx = shapes.get(f"{name}.g_idx")
        in_features = g_idx[0][0] if g_idx else shape[0] * 32 // settings["bits"]
        rows[name] = {
            "method": "gptq",
            "in_features": in_features,
            "out_features": shape[1],
            "bias": f"{name}.bias" in shapes,
            **settings,
        }
    if not rows:
        raise ValueError(f"{where}: quant_method gptq, but no tensor is a GPTQ qweight")
    return {**qc, "method": "gptq", "layers": rows}


def _settings(qc: Mapping[str, Any], where: str) -> dict[str, Any]:
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt not in FORMATS:
        raise ValueError(
            f"{where}: checkpoint_format {fmt!r} is not readable; expected one of {list(FORMATS)}"
        )
    pack = qc.get("pack_dtype", "int32")
    if str(pack).removeprefix("torch.") != "int32":
        raise ValueError(f"{where}: pack_dtype {pack!r} is not readable; expected int32")
    settings = {
        "bits": qc.get("bits"),
        "groupsize": qc.get("group_size", -1),
        "sym": bool(qc.get("sym", True)),
        "desc_act": bool(qc.get("desc_act", False)),
        "checkpoint_format": fmt,
    }
    _check(settings, where)
    return settings


def _override(name: str, dynamic: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The settings of the first positive ``dynamic`` pattern matching ``name`` (re.match)."""
    for pattern, values in dynamic.items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern[:2] in ("+:", "-:") else pattern
        if not re.match(regex, name):
            continue
        if negative or not isinstance(values, dict):
            return {}
        found = {_OVERRIDES[k]: v for k, v in values.items() if k in _OVERRIDES}
        _check(found, f"{where}: dynamic[{pattern!r}]")
        return found
    return {}


def _check(settings: Mapping[str, Any], where: str) -> None:
    bits = settings.get("bits", 4)
    if isinstance(bits, bool) or bits not in GPTQ_BITS:
        raise ValueError(
            f"{where}: bits {bits!r} is not readable; expected one of {', '.join(map(str, GPTQ_BITS))}"
        )
    group = settings.get("groupsize", -1)
    if isinstance(group, bool) or not isinstance(group, int) or not (group == -1 or group > 0):
        raise ValueError(f"{where}: group_size {group!r}; expected -1 or a positive integer")
