"""The "gguf" format: a quantized Llama as one GGUF file for llama.cpp.

Tensor names come from gguf's own map (``TensorNameMap`` for
``MODEL_ARCH.LLAMA``), metadata follows llama.cpp's converter (hyper-
parameters, ``general.file_type``, the tokenizer as ``tokenizer.ggml.*``),
and q/k rows are permuted the way llama.cpp's rotary embedding expects
(a row permutation, so quantized rows move whole and stay lossless).
Quantized layers are encoded by :mod:`.gguf_blocks`; every layer that is not
lossless is reported on stderr with its measured error. The file is written
beside ``out`` and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..contract import Artifact
from ..kernels import PackedIntLinear
from .gguf_blocks import Encoded, encode_grid, nearest_type, requantize

#: llama.cpp's general.file_type for the type most layers take
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}


def save_gguf(artifact: Artifact, out: Path) -> None:
    """Write ``artifact`` (a Llama) as a GGUF file at ``out``."""
    try:
        import gguf
    except ImportError:
        raise ImportError(
            "the gguf format needs the gguf package: pip install 'onecomp-core[gguf]'"
        ) from None
    model = artifact.model
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ValueError(
            f"--format gguf: exports Llama models (model_type 'llama'); this one is "
            f"{getattr(config, 'model_type', None)!r}"
        )
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors, report = _tensors(model, artifact.rows, names)
    tmp = out.with_name(f".{out.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _metadata(writer, config, artifact, _file_type(tensors))
        for name, encoded in tensors.items():
            kind = gguf.GGMLQuantizationType[encoded.qtype]
            raw = None if encoded.data.dtype != np.uint8 else kind
            writer.add_tensor(name, encoded.data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for line in report:
        print(line, file=sys.stderr)


def _tensors(model: nn.Module, rows: dict, names) -> tuple[dict[str, Encoded], list[str]]:
    """GGUF name → encoded tensor, and the report lines for layers that are not lossless."""
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    tensors: dict[str, Encoded] = {}
    report: list[str] = []
    done: set[str] = set()
    for module_name, module in model.named_modules():
        if module_name in rows:
            encoded = _layer(module_name, module, rows[module_name], report)
            tensors[_name(names, module_name + ".weight")] = _permuted(
                encoded, module_name, heads, kv_heads
            )
            done.add(module_name)
            if getattr(module, "bias", None) is not None:
                bias = module.bias.detach().float().numpy()
                tensors[_name(names, module_name + ".bias")] = _plain(bias)
    for key, tensor in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if any(owner == d or owner.startswith(d + ".") for d in done):
            continue
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        values = tensor.detach()
        values = values if values.dim() > 1 else values.float()  # norms stay F32
        encoded = _plain(values, module_key=key)
        tensors[_name(names, key)] = _permuted(encoded, owner, heads, kv_heads)
    return tensors, report


def _layer(name: str, module: nn.Module, row: dict, report: list[str]) -> Encoded:
    """One quantized layer: a grid layer mapped or re-quantized; other methods as F16."""
    if isinstance(module, PackedIntLinear):
        encoded = encode_grid(
            module.codes(), module.scales.float(), module.zeros(), module.g_idx, module.bits
        )
        if encoded is None and module.in_features % 32 == 0:
            sym = bool((module.zeros() == (1 << (module.bits - 1))).all())
            encoded = requantize(module.dequantize(), nearest_type(module.bits, sym))
        if encoded is None:
            encoded = _plain(module.dequantize())
            encoded.note = f"in_features {module.in_features} is not a multiple of 32"
        if encoded.note != "lossless":
            report.append(
                f"gguf: {name} ({row.get('method')}, {module.bits}-bit) → {encoded.qtype}: "
                f"{encoded.note} (max abs weight error {encoded.max_error:.3g})"
            )
        return encoded
    dequantize = getattr(module, "dequantize", None)
    if dequantize is None:
        raise ValueError(f"--format gguf: layer {name} ({row.get('method')}) cannot be dequantized")
    encoded = _plain(dequantize().to(torch.float16))
    report.append(
        f"gguf: {name} ({row.get('method')}) has no GGUF type: written as F16 dequantized weights"
    )
    return encoded


def _plain(values: Any, module_key: str = "") -> Encoded:
    """An unquantized tensor in its own precision (F32, F16; bf16 as BF16)."""
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bfloat16:
            data = values.contiguous().view(torch.int16).numpy().view(np.uint8)
            data = data.reshape(*values.shape[:-1], values.shape[-1] * 2)
            return Encoded(data, "BF16", True, 0.0, "lossless")
        values = (
            values.numpy()
            if values.dtype in (torch.float16, torch.float32)
            else (values.float().numpy())
        )
    qtype = "F16" if values.dtype == np.float16 else "F32"
    return Encoded(np.ascontiguousarray(values), qtype, True, 0.0, "lossless")


def _name(names, key: str) -> str:
    base, _, suffix = key.rpartition(".")
    found = names.get_name(base)
    if found is None:
        raise ValueError(f"--format gguf: no llama.cpp name for tensor {key}")
    return f"{found}.{suffix}"


def _permuted(encoded: Encoded, module: str, heads: int, kv_heads: int) -> Encoded:
    """q/k rows reordered from Hugging Face's rotary halves to llama.cpp's interleaved pairs."""
    if module.endswith("self_attn.q_proj"):
        n = heads
    elif module.endswith("self_attn.k_proj"):
        n = kv_heads
    else:
        return encoded
    rows = encoded.data.shape[0]
    order = np.arange(rows).reshape(n, 2, rows // n // 2).swapaxes(1, 2).reshape(rows)
    encoded.data = np.ascontiguousarray(encoded.data[order])
    return encoded


def _file_type(tensors: dict[str, Encoded]) -> int:
    counts: dict[str, int] = {}
    for encoded in tensors.values():
        if encoded.data.ndim == 2 and encoded.qtype not in ("F32",):
            counts[encoded.qtype] = counts.get(encoded.qtype, 0) + encoded.data.size
    if not counts:
        return FILE_TYPES["F32"]
    return FILE_TYPES.get(max(counts, key=counts.get), FILE_TYPES["F16"])


def _metadata(writer, config, artifact: Artifact, file_type: int) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(str(getattr(config, "_name_or_path", "") or "onecomp model"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)
    writer.add_string("onecomp.quant_method", str(artifact.quantization_config.get("quant_method")))
    if artifact.tokenizer is not None:
        _tokenizer(writer, artifact.tokenizer, config.vocab_size)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return params.get("rope_theta") or getattr(config, "rope_theta", 10000.0)


def _tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A SentencePiece-style ("llama") vocabulary: tokens, scores from BPE merge ranks, types."""
    import gguf

    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = set(getattr(tokenizer, "all_special_ids", []))
    ranks = _merge_ranks(tokenizer)
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token = by_id.get(i, f"[PAD{i}]")
        tokens.append(token.encode("utf-8"))
        scores.append(-float(ranks[token]) if token in ranks else 0.0)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            types.append(gguf.TokenType.BYTE)
        elif i in special:
            types.append(gguf.TokenType.CONTROL)
        elif i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    for attr, add in (
        ("bos_token_id", writer.add_bos_token_id),
        ("eos_token_id", writer.add_eos_token_id),
        ("unk_token_id", writer.add_unk_token_id),
    ):
        if getattr(tokenizer, attr, None) is not None:
            add(int(getattr(tokenizer, attr)))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _merge_ranks(tokenizer) -> dict[str, int]:
    """Token → rank of the BPE merge that makes it (llama.cpp merges by score: −rank)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return {}
    merges = json.loads(backend.to_str()).get("model", {}).get("merges") or []
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        ranks.setdefault("".join(pair), rank + 1)
    return ranks
