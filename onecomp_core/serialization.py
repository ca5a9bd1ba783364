"""Saving and loading quantized models as ordinary Hugging Face folders.

A saved folder holds ``config.json`` with a ``quantization_config`` (method
config, ``format_version``, the resolved per-layer table), safetensors
weights (sharded when large) and the tokenizer. Loading never re-runs layer
selection: each row of the table names its method, and that method's
``build_inference_layer`` makes the empty module the tensors are loaded into.
Everything is written to a temporary folder beside the target and renamed
at the end, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import adapters
from .quantizer import Quantizer

if TYPE_CHECKING:
    from .runner import Runner

FORMAT_VERSION = 1
MAX_SHARD_SIZE = "5GB"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


# -- building the packed model ---------------------------------------------------------
def inference_layers(model: nn.Module, quantizer: Quantizer) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    return {
        name: quantizer.create_inference_layer(result, modules[name])
        for name, result in quantizer.results.items()
    }


def packed_model(
    model: nn.Module, quantizer: Quantizer, conv1d_as_linear: bool = False
) -> nn.Module:
    """A new model with inference layers in place of the quantized Linears.

    The untouched tensors are shared with ``model``, not copied, so this costs
    only the packed layers' memory.
    """
    skeleton = _skeleton(model.config.to_dict())
    if conv1d_as_linear:
        adapters.linearize_conv1d(skeleton)
    packed = inference_layers(model, quantizer)
    for name, layer in packed.items():
        adapters.set_submodule(skeleton, name, layer.to(model.get_submodule(name).weight.device))
    state = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in packed}
    skeleton.load_state_dict(state, strict=False, assign=True)
    _finish(skeleton, model.config.to_dict())
    return skeleton


def layer_table(model: nn.Module, quantizer: Quantizer) -> dict[str, dict[str, Any]]:
    """The resolved per-layer rows a loader needs (method, shapes, bits, ...)."""
    modules = dict(model.named_modules())
    table = {}
    for name, result in quantizer.results.items():
        module = modules[name]
        out_features, in_features = module.weight.shape
        row = {
            "method": getattr(result, "_method", None) or quantizer.method,
            "in_features": in_features,
            "out_features": out_features,
            "bias": getattr(module, "bias", None) is not None,
            **result.layer_config(),
        }
        bits = result.effective_bits(out_features, in_features)
        if bits is not None:
            row["effective_bits"] = round(bits, 6)
        table[name] = row
    return table


def _state_for_saving(model: nn.Module, quantizer: Quantizer) -> dict[str, torch.Tensor]:
    """Dense tensors of the untouched modules plus the packed tensors of quantized layers."""
    packed = inference_layers(model, quantizer)
    state: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for key, tensor in model.state_dict().items():
        layer = key.rpartition(".")[0]
        if layer in packed:
            continue
        ident = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and ident in seen:
            continue  # tied to an earlier tensor; the loader re-ties
        seen[ident] = key
        state[key] = tensor.detach().cpu().contiguous()
    for name, layer in packed.items():
        for key, tensor in layer.state_dict().items():
            state[f"{name}.{key}"] = tensor.detach().cpu().contiguous()
    return state


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


@contextmanager
def atomic_folder(out_dir: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out_dir`` only if the block succeeds."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output folder {out} already exists (pass --overwrite / overwrite=True to replace it)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def quantization_config(runner: Runner) -> dict[str, Any]:
    quantizer = runner.quantizer
    config = {
        **quantizer.get_quant_config(),
        "quant_method": quantizer.method,
        "format_version": FORMAT_VERSION,
        "quantizer": type(quantizer).__name__,
        "layers": layer_table(runner.model, quantizer),
        "calibration_hash": runner.calibration.sha256 if runner.calibration else None,
    }
    if getattr(runner, "qep", False):
        config["qep"] = dataclasses.asdict(runner.qep_config)
    if getattr(runner, "conv1d_linearized", 0):
        config["conv1d_as_linear"] = True
    return config


def save_quantized_model(runner: Runner, out_dir: str | Path, overwrite: bool = False) -> Path:
    model = runner.model
    with atomic_folder(out_dir, overwrite) as tmp:
        _write_weights(_state_for_saving(model, runner.quantizer), tmp)
        config = model.config.to_dict()
        config["quantization_config"] = quantization_config(runner)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if runner.tokenizer is not None:
            runner.tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def save_dequantized_model(runner: Runner, out_dir: str | Path, overwrite: bool = False) -> Path:
    """A plain Hugging Face model whose quantized weights are replaced by their dense values."""
    with atomic_folder(out_dir, overwrite) as tmp:
        runner.model.save_pretrained(str(tmp))
        if runner.tokenizer is not None:
            runner.tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


# -- loading ---------------------------------------------------------------------------------
def read_quantized_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config dict without quantization_config, quantization_config)."""
    path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json")
    config = json.loads(path.read_text())
    qc = config.pop("quantization_config", None)
    if not isinstance(qc, dict) or "layers" not in qc:
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


def _skeleton(config_dict: dict[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.for_model(**config_dict)
    architectures = config_dict.get("architectures") or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    auto = AutoModelForCausalLM if causal else AutoModel
    with init_empty_weights(include_buffers=False):
        return auto.from_config(config, dtype=_dtype(config_dict))


def _dtype(config_dict: dict[str, Any]) -> torch.dtype:
    name = config_dict.get("dtype") or config_dict.get("torch_dtype") or "float32"
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / INDEX_NAME
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else [WEIGHTS_NAME]
    )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is missing its weights file {name}")
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(
                f"cannot read {path}: the file is corrupt or truncated ({exc})"
            ) from exc
    return tensors


def _check_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in expected if k not in tensors and k not in tied]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k}: saved {tuple(tensors[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in tensors
        if k in expected and tensors[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        lines = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if items:
                shown = ", ".join(items[:5]) + (
                    f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                )
                lines.append(f"{label}: {shown}")
        raise ValueError("saved tensors do not fit the model: " + "; ".join(lines))


def load_quantized_model(
    folder: str | Path, device_map: str | None = None, dtype: torch.dtype | str | None = None
) -> tuple[nn.Module, Any]:
    """Load a onecomp folder → ``(model, tokenizer)`` (tokenizer None when not saved)."""
    from .plugins import get_quantizer

    folder = Path(folder)
    config_dict, qc = read_quantized_config(folder)
    model = _skeleton(config_dict)
    if qc.get("conv1d_as_linear"):
        adapters.linearize_conv1d(model)
    for name, row in qc["layers"].items():
        cls = get_quantizer(row["method"])
        adapters.set_submodule(model, name, cls.build_inference_layer(row))
    tensors = _read_tensors(folder)
    _check_state(model, tensors)
    model.load_state_dict(tensors, strict=False, assign=True)
    _finish(model, config_dict)
    if dtype is not None:
        model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.to(_device(device_map))
    model.eval()
    return model, _tokenizer(folder)


def _finish(model: nn.Module, config_dict: dict[str, Any]) -> None:
    """Re-tie embeddings and make sure no parameter was left on the meta device."""
    if config_dict.get("tie_word_embeddings", False):
        model.tie_weights()
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise ValueError(f"these parameters were not in the saved files: {left[:5]}")
    model.eval()


def _device(device_map: str | None) -> torch.device:
    if device_map in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


def _tokenizer(folder: Path):
    if not any(
        (folder / f).exists()
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")
    ):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
