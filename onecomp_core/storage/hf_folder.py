"""The "hf" format: a quantized model as an ordinary Hugging Face folder, saved and loaded.

A saved folder holds ``config.json`` with a ``quantization_config`` (method
config, ``format_version``, the resolved per-layer table), safetensors
weights (sharded when large) and the tokenizer. Loading never re-runs layer
selection: each row of the table names its method, and that method's
``empty_layer(row)`` makes the empty module the tensors are loaded into.
Everything is written to a temporary folder beside the target and renamed
at the end, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .. import registry
from ..contract import Artifact
from ..data import adapters
from ..data.model import resolve_device, resolve_dtype
from ..transforms.rotation import attach_online
from .atomic import atomic_folder
from .gptq_checkpoint import gptq_table, is_standard_gptq
from .quant_method import GUARD_FIELD, label_config
from .reading import (
    pickle_message,
    pickle_only,
    read_json_object,
    read_tensors,
    tensor_headers,
)
from .skeleton import finish, skeleton
from .verify import layer_problems, state_problems

FORMAT_VERSION = 1
MAX_SHARD_SIZE = "5GB"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")


# -- saving ----------------------------------------------------------------------------------
def save(artifact: Artifact, out: Path) -> None:
    """Write ``artifact`` as a Hugging Face folder at ``out`` (replaced atomically)."""
    with atomic_folder(out, overwrite=True) as tmp:
        _write_weights(_state(artifact.model, set(artifact.rows)), tmp)
        config = artifact.model.config.to_dict()
        if not config.get("architectures"):  # a model built in code: name it, as HF's save does
            config["architectures"] = [type(artifact.model).__name__]
        config = label_config(config, artifact.quantization_config)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if artifact.tokenizer is not None:
            artifact.tokenizer.save_pretrained(str(tmp))


def _state(model: nn.Module, packed: set[str]) -> dict[str, torch.Tensor]:
    """Every tensor of the packed model; a tensor tied to an earlier one outside the ``packed``
    layers (lm_head and the embeddings) is stored once, and the loader re-ties it."""
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, tensor in model.state_dict().items():
        if not _inside(key, packed):
            ident = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
            if tensor.numel() and ident in seen:
                continue
            seen.add(ident)
        state[key] = tensor.detach().cpu().contiguous()
    return state


def _inside(key: str, layers: set[str]) -> bool:
    """Whether the tensor ``key`` belongs to one of ``layers`` (at any depth)."""
    while "." in key:
        key = key.rpartition(".")[0]
        if key in layers:
            return True
    return False


def _write_weights(state: dict[str, torch.Tensor], folder: Path) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=MAX_SHARD_SIZE
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": split.tensor_to_filename,
        }
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=1))


# -- loading ---------------------------------------------------------------------------------
def read_quantized_config(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config dict without quantization_config, quantization_config).

    A standard GPTQ folder written by another tool (transformers, GPTQModel) gets
    its per-layer table from its config and tensor headers (:mod:`.gptq_checkpoint`).
    """
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    config = read_json_object(path)
    config.pop(GUARD_FIELD, None)
    qc = config.pop("quantization_config", None)
    if isinstance(qc, dict) and is_standard_gptq(qc):  # written by another tool
        qc = gptq_table(qc, tensor_headers(folder), str(path))
    if not isinstance(qc, dict) or not isinstance(qc.get("layers"), dict):
        raise ValueError(
            f"{path} has no onecomp quantization_config: this is not a model "
            "saved by onecomp (load it with transformers directly)"
        )
    if qc.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {qc['format_version']} is newer than this "
            f"onecomp supports ({FORMAT_VERSION}); upgrade onecomp-core"
        )
    return config, qc


def load_quantized_model(
    folder: str | Path,
    device_map: str | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a onecomp folder → ``(model, tokenizer)`` (tokenizer None when not saved).

    ``device_map``: None or "auto" (the first GPU, else the CPU) or a device
    such as "cpu" / "cuda:1"; ``dtype`` ("float16", a torch dtype, ...) converts the
    loaded model ("auto" or None keeps the saved dtype).
    """
    return _load(Path(folder), device_map, dtype)[:2]


def load_artifact(folder: str | Path, device_map: str | None = "cpu") -> Artifact:
    """A saved folder as the :class:`Artifact` a format's ``save`` receives (no results)."""
    model, tokenizer, qc = _load(Path(folder), device_map, None)
    return Artifact(model=model, rows=qc["layers"], quantization_config=qc, tokenizer=tokenizer)


def _load(
    folder: Path, device_map: str | None, dtype: torch.dtype | str | None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model, tokenizer, quantization_config) of a saved folder, its config read once."""
    config_dict, qc = read_quantized_config(folder)
    model = skeleton(config_dict)
    rows = qc["layers"]
    put_empty_layers(model, qc, folder / "config.json")
    tensors = _read_tensors(folder)
    problems = state_problems(model, tensors, rows)
    if not problems:
        model.load_state_dict(tensors, strict=False, assign=True)
        problems = layer_problems(model, rows)
    if problems:
        raise ValueError(f"{folder}: saved tensors do not fit the model: " + "; ".join(problems))
    finish(model, config_dict)
    attach_online(model, qc.get("rotation"))  # a rotated model's run-time rotations
    if dtype not in (None, "auto"):
        model.to(resolve_dtype(dtype))
    model.to(resolve_device(device_map))
    return model.eval(), _tokenizer(folder), qc


def put_empty_layers(model: nn.Module, qc: dict[str, Any], source: str | Path) -> None:
    """Replace every layer of ``qc["layers"]`` by its method's empty module, in place.

    The one way a saved table becomes modules, shared by :func:`load_quantized_model`
    and the transformers registration (:mod:`onecomp_core.hf`); ``source`` names
    the config in errors.
    """
    if qc.get("conv1d_as_linear"):
        adapters.linearize_conv1d(model)
    for name, row in qc["layers"].items():
        adapters.set_submodule(model, name, _empty_layer(source, name, row))


def _empty_layer(source: str | Path, name: str, row: Any) -> nn.Module:
    """The method's empty module for one table row; a bad row is named with its layer."""
    try:
        if not isinstance(row, dict):
            raise ValueError("expected a JSON object")
        return registry.get_method(row["method"]).empty_layer(row)
    except registry.UnknownMethodError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(
            f"{source}: layer {name} of quantization_config is invalid ({what})"
        ) from None


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map")
        files = sorted(set(weight_map.values()))
    else:
        files = [WEIGHTS_NAME]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            pickled = pickle_only(folder)
            if pickled is not None:
                raise ValueError(pickle_message(pickled))
            raise FileNotFoundError(f"{folder} is missing its weights file {name}")
        tensors.update(read_tensors(path))
    return tensors


def _tokenizer(folder: Path) -> Any:
    if not any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
