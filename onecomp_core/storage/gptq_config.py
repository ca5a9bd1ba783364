"""The GPTQ ecosystem's keys of a ``quantization_config``, or why an output cannot carry them.

transformers (through optimum), GPTQModel and vLLM read a GPTQ checkpoint
from ``bits``, ``group_size``, ``desc_act``, ``sym`` and ``checkpoint_format``
(``format`` in newer transformers), plus three keys for what is not uniform:

- ``modules_in_block_to_quantize`` (optimum): the layers of a block that are
  quantized; any other Linear of the block stays a plain Linear. Matched by
  name suffix, so a list of block-relative names when every block keeps the
  same ones, else the full names;
- ``dynamic`` (GPTQModel and vLLM): regex → per-module settings, ``+:`` to
  override ``bits``/``group_size``/``sym``/``desc_act`` of the matched module,
  ``-:`` for a module left unquantized;
- ``lm_head``: whether the output head is quantized. Always false here:
  transformers' GPTQ path (optimum) replaces only the blocks' layers, and
  loads a quantized head as a *random* Linear with a warning, so an output
  with a quantized head is not labelled GPTQ.

An output is labelled plain GPTQ only when every quantized layer is in a
shape the consumers' kernels take: 2, 3, 4 or 8 bits, a group size of -1 or
a power of two from 16 to 1024 (gptqmodel's torch kernel), in_features a
multiple of the group size and of the 32-bit word (in·bits/32 whole), and
out_features filling whole words of ``qzeros``. Otherwise :func:`gptq_keys`
says why, and the caller saves the output under onecomp's own quant_method.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from .. import registry
from ..engine.blocks import find_blocks
from ..kernels import GridResult

KERNEL_BITS = (2, 3, 4, 8)
KERNEL_GROUP_SIZES = (-1, 16, 32, 64, 128, 256, 512, 1024)
#: the per-layer settings a ``dynamic`` entry may override: row key → saved key
OVERRIDES = {"bits": "bits", "groupsize": "group_size", "sym": "sym", "desc_act": "desc_act"}


def writes_gptq_layout(method: str | type) -> bool:
    """Whether a method's results (a class, or a registered name) are codes on GPTQ's grid,
    saved as GPTQ's tensors."""
    if isinstance(method, str):
        try:
            method = registry.get_method(method)
        except LookupError:
            return False
    return issubclass(method.result_type, GridResult)


def zero_format(row: Mapping[str, Any]) -> str:
    """The zero-point convention of a row: GPTQ records it; other grid methods store raw zeros."""
    return row.get("checkpoint_format", "gptq_v2")


def setting_problem(bits: Any, group: Any) -> str | None:
    """Why GPTQ kernels cannot take ``bits`` and group size ``group`` (None when they can)."""
    if bits not in KERNEL_BITS:
        return f"{bits}-bit codes (GPTQ kernels take {', '.join(map(str, KERNEL_BITS))})"
    if group not in KERNEL_GROUP_SIZES:
        sizes = ", ".join(map(str, KERNEL_GROUP_SIZES))
        return f"group size {group} (GPTQ kernels take {sizes})"
    return None


def kernel_problem(name: str, row: Mapping[str, Any]) -> str | None:
    """Why a GPTQ kernel cannot take the layer ``name`` (None when it can)."""
    bits, group = row["bits"], row["groupsize"]
    n_in, n_out = row["in_features"], row["out_features"]
    problem = setting_problem(bits, group)
    if problem:
        return f"layer {name} has {problem}"
    if group != -1 and n_in % group:
        return f"layer {name} has {n_in} inputs, not a multiple of its group size {group}"
    for what, count in (("inputs", n_in), ("outputs", n_out)):
        if count * bits % 32:
            return (
                f"layer {name} has {count} {what}, which do not fill whole 32-bit words "
                f"at {bits} bits (a multiple of {32 // math.gcd(bits, 32)} is needed)"
            )
    return None


def gptq_keys(
    model: nn.Module, rows: Mapping[str, Mapping[str, Any]], base: Mapping[str, Any]
) -> dict[str, Any] | str:
    """The GPTQ keys of an output whose quantized layers are ``rows``, or why there are none.

    ``base``: the headline ``bits``, ``group_size``, ``sym`` (and ``desc_act``)
    saved at the top level; a layer that differs gets a ``dynamic`` entry.
    """
    if not rows:
        return "no layer is quantized"
    formats = {zero_format(row) for row in rows.values()}
    if len(formats) > 1:
        return f"layers use different zero-point formats {sorted(formats)}"
    defaults = {"bits": base["bits"], "groupsize": base["group_size"], "sym": base["sym"]}
    defaults["desc_act"] = bool(base.get("desc_act", False))
    problem = setting_problem(defaults["bits"], defaults["groupsize"])
    if problem:
        return f"the headline setting has {problem}"
    for name, row in rows.items():
        if not writes_gptq_layout(row["method"]):
            return f"layer {name} is quantized by {row['method']}, not on GPTQ's grid"
        problem = kernel_problem(name, row)
        if problem:
            return problem
    prefix, blocks = find_blocks(model)
    in_blocks = [n for n, m in model.named_modules() if n.startswith(prefix + ".") and _linear(m)]
    head, block_layers = _head_name(model), set(in_blocks)
    for name in rows:
        if name == head:
            return (
                f"the output head {name} is quantized (transformers' GPTQ loader would "
                "load a random head in its place)"
            )
        if name not in block_layers:
            return f"layer {name} is outside the blocks ({prefix})"
    dynamic: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        settings = {field: row.get(field, False) for field in OVERRIDES}
        changed = {OVERRIDES[f]: v for f, v in settings.items() if v != defaults[f]}
        if changed:
            dynamic[f"+:^{re.escape(name)}$"] = changed
    kept = [n for n in in_blocks if n in rows]
    for name in in_blocks:
        if name not in rows:
            dynamic[f"-:^{re.escape(name)}$"] = {}
    fmt = formats.pop()
    keys: dict[str, Any] = {
        "desc_act": defaults["desc_act"],
        "checkpoint_format": fmt,
        "format": fmt,
        "lm_head": False,
    }
    if dynamic:
        keys["dynamic"] = dynamic
    if len(kept) < len(in_blocks):
        keys["modules_in_block_to_quantize"] = [_in_block_names(kept, prefix, len(blocks))]
    return keys


def _in_block_names(kept: list[str], prefix: str, count: int) -> list[str]:
    """Block-relative names when every block keeps the same layers, else the full names."""
    per_block: dict[str, list[str]] = {}
    for name in kept:
        index, _, rest = name[len(prefix) + 1 :].partition(".")
        per_block.setdefault(index, []).append(rest)
    first = per_block.get("0")
    if len(per_block) == count and all(names == first for names in per_block.values()):
        return list(first)
    return list(kept)


def _linear(module: nn.Module) -> bool:
    """A layer optimum would replace by a GPTQ layer (Linear, Conv2d, GPT-2's Conv1D)."""
    return isinstance(module, nn.Linear | nn.Conv2d) or type(module).__name__ == "Conv1D"


def _head_name(model: nn.Module) -> str | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)
