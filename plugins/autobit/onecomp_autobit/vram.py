"""How many bits per weight fit a given amount of accelerator memory.

The model is built from its config on the meta device (no weights are
read), the Linear weights the Runner would quantize are counted, and
everything else (embeddings, norms, biases, lm_head by default) is charged
at fp16. With Q quantizable weights in layers of widths in_l, group size g
(G_l = g, or in_l for per row) and a 16-bit scale plus a b-bit zero per
group, the weights cost Q·b + Σ_l (p_l/G_l)·(16 + b) bits. Setting that
equal to ratio·VRAM − 16·(other params) gives

    e = ratio·VRAM·8 / Q − 16·other/Q          (effective bits per weight)
    b = (e − 16·r) / (1 + r),  r = Σ_l (p_l/G_l) / Q  (groups per weight)

``b`` is the raw ``target_bit`` to give AutoBit; ``e`` what it means with the
metadata. Memory is counted in GiB (2^30 bytes), the unit GPUs are sold in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onecomp_core.contract import Method

GIB = 2**30


@dataclass
class VramEstimate:
    """``target_bitwidth``: raw bits per weight for AutoBit's ``target_bit``."""

    target_bitwidth: float
    effective_bits: float
    breakdown: dict[str, Any]


def meta_model(model_id_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's modules with shapes but no storage (from config.json only)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_id_or_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        try:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError:  # not a causal LM (e.g. an encoder)
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    return model


def in_features(module: nn.Module) -> int | None:
    """Input width of a Linear or of a GPT-2 style ``Conv1D`` (weight stored (in, out)), else None.

    The engine quantizes both (it turns Conv1D into Linear first); counting
    them here needs no conversion.
    """
    if isinstance(module, nn.Linear):
        return module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight.shape[0]
    return None


def count_parameters(
    model: nn.Module, exclude_layer_names: Sequence[str] = ("lm_head",)
) -> tuple[dict[str, nn.Module], int, int]:
    """(selected Linears, their weight count, count of every other parameter; tied ones once)."""
    linears = {n: m for n, m in model.named_modules() if in_features(m) is not None}
    rules = Method(exclude_layer_names=list(exclude_layer_names), target_layer_types=(nn.Module,))
    layers = rules.select(linears)
    if not layers:
        raise ValueError("the model has no Linear layer left to quantize")
    quantizable = sum(m.weight.numel() for m in layers.values())
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    return layers, quantizable, total - quantizable


def estimate_wbits_from_vram(
    model_id_or_path: str,
    total_vram_gb: float,
    ratio: float = 0.8,
    *,
    groupsize: int = 128,
    min_bits: float = 1.0,
    max_bits: float = 16.0,
    exclude_layer_names: Sequence[str] = ("lm_head",),
    trust_remote_code: bool = False,
) -> VramEstimate:
    """The raw bits per weight that fit ``ratio × total_vram_gb`` GiB (see module docstring).

    ``min_bits`` is the smallest candidate (1 for DBF, 2 for GPTQ 2-bit): a
    clear ValueError says how much memory is needed when even that does not
    fit. The answer is capped at ``max_bits``.
    """
    if not total_vram_gb > 0 or not 0 < ratio <= 1:
        raise ValueError(
            f"total_vram_gb={total_vram_gb!r}, ratio={ratio!r}: expected a size > 0 and "
            "0 < ratio <= 1"
        )
    model = meta_model(model_id_or_path, trust_remote_code)
    layers, quantizable, other = count_parameters(model, exclude_layer_names)
    widths = {n: in_features(m) for n, m in layers.items()}
    groups = sum(
        m.weight.numel() / (widths[n] if groupsize in (-1, 0) else min(groupsize, widths[n]))
        for n, m in layers.items()
    )
    per_weight = groups / quantizable
    budget_bits = ratio * total_vram_gb * GIB * 8
    effective = (budget_bits - 16.0 * other) / quantizable
    raw = (effective - 16.0 * per_weight) / (1.0 + per_weight)

    def needed_gib(bits: float) -> float:
        weights = quantizable * bits + groups * (16.0 + bits)
        return (weights + 16.0 * other) / 8 / GIB

    breakdown = {
        "model": str(model_id_or_path),
        "total_vram_gb": total_vram_gb,
        "ratio": ratio,
        "budget_gib": ratio * total_vram_gb,
        "quantized_layers": len(layers),
        "quantizable_params": quantizable,
        "other_params": other,
        "other_fp16_gib": 16.0 * other / 8 / GIB,
        "groupsize": groupsize,
        "groups_per_weight": per_weight,
        "effective_bits": effective,
        "raw_bits": raw,
    }
    if raw < min_bits:
        raise ValueError(
            f"{model_id_or_path} does not fit {ratio:g} × {total_vram_gb:g} GiB even at "
            f"{min_bits:g} bits per weight: that needs {needed_gib(min_bits):.2f} GiB "
            f"(fp16 non-quantized parameters alone {breakdown['other_fp16_gib']:.2f} GiB), "
            f"i.e. total_vram_gb >= {needed_gib(min_bits) / ratio:.2f} at ratio {ratio:g}"
        )
    target = min(raw, max_bits)
    breakdown["capped"] = raw > max_bits
    breakdown["quantized_weights_gib"] = (quantizable * target + groups * (16.0 + target)) / 8 / GIB
    return VramEstimate(target, target * (1.0 + per_weight) + 16.0 * per_weight, breakdown)
