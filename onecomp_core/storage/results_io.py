"""Layer results on disk: one safetensors file of tensors plus a JSON manifest.

No pickle: every result field is a tensor or a JSON value (see
:class:`~onecomp_core.contract.LayerResult`). The manifest names each
layer's method, and the result class is found again through the registry
as that method's ``result_type``. Folders written before ``method`` became a
result field (their entries lack it under "fields") load the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import registry
from ..contract import LayerResult
from .atomic import atomic_folder
from .reading import read_json_object, read_tensors

FORMAT_VERSION = 1
TENSORS = "results.safetensors"
MANIFEST = "results.json"


def result_method(result: LayerResult) -> str:
    """The method that made ``result``: its ``method`` field, else the method whose result_type
    it is (results built by calling ``quantize_layer`` directly leave the field empty)."""
    if result.method:
        return result.method
    for name, cls in registry.methods().items():
        if type(result) is cls.result_type:
            return name
    raise ValueError(f"no installed method declares {type(result).__name__} as its result_type")


def save_results(results: dict[str, LayerResult], path: str | Path) -> None:
    """Write ``results`` into the folder ``path`` (created, or replaced atomically)."""
    tensors, layers = {}, {}
    for name, result in results.items():
        own, fields = result.to_state()
        method = result_method(result)
        tensors.update({f"{name}::{k}": v for k, v in own.items()})
        layers[name] = {
            "method": method,
            "class": type(result).__name__,
            "fields": {**fields, "method": method},
        }
    manifest = {"format_version": FORMAT_VERSION, "layers": layers}
    with atomic_folder(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def load_results(path: str | Path) -> dict[str, LayerResult]:
    """The results saved in ``path``; an uninstalled method or a changed class is named."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} holds no saved results ({MANIFEST} is missing)")
    manifest = read_json_object(manifest_path)
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path}: results format_version {version} is newer than this onecomp "
            f"reads ({FORMAT_VERSION}); upgrade onecomp-core"
        )
    layers = manifest.get("layers")
    if not isinstance(layers, dict):
        raise ValueError(f"{manifest_path} names no layers; the file is damaged")
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in read_tensors(path / TENSORS).items():
        layer, _, field = key.partition("::")
        tensors.setdefault(layer, {})[field] = tensor
    results: dict[str, LayerResult] = {}
    for name, entry in layers.items():
        if not isinstance(entry, dict) or not {"method", "class", "fields"} <= set(entry):
            raise ValueError(
                f"{manifest_path}: the entry of layer {name} lacks method, class or fields; "
                "the file is damaged"
            )
        cls = registry.get_method(entry["method"]).result_type
        if cls.__name__ != entry["class"]:
            raise ValueError(
                f"{name}: saved as {entry['class']}, but method "
                f"{entry['method']!r} now produces {cls.__name__}"
            )
        try:
            result = cls.from_state(tensors.get(name, {}), entry["fields"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: the saved result of layer {name} does not fit {cls.__name__} ({exc})"
            ) from None
        result.method = entry["method"]
        results[name] = result
    return results
