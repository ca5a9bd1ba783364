"""Quantization results on disk: one safetensors file of tensors plus a JSON manifest.

No pickle: every result field is a tensor or a JSON value (see
:class:`~onecomp_core.result.QuantizationResult`), and the result class is
found again through the registry by method name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from .result import QuantizationResult

FORMAT_VERSION = 1
TENSORS = "results.safetensors"
MANIFEST = "results.json"


def result_method(result: QuantizationResult) -> str:
    """The registry method whose ``result_type`` this result is (set by Quantizer.quantize)."""
    method = getattr(result, "_method", None)
    if method:
        return method
    from .plugins import quantizer_classes

    for name, cls in quantizer_classes().items():
        if type(result) is cls.result_type:
            return name
    raise ValueError(f"no installed method declares {type(result).__name__} as its result_type")


def save_results(results: dict[str, QuantizationResult], path: str | Path) -> None:
    """Write ``results`` into the folder ``path`` (created; replaced atomically)."""
    path = Path(path)
    tensors, layers = {}, {}
    for name, result in results.items():
        t, meta = result.to_state()
        tensors.update({f"{name}::{k}": v for k, v in t.items()})
        layers[name] = {
            "method": result_method(result),
            "class": type(result).__name__,
            "fields": meta,
        }
    manifest = {"format_version": FORMAT_VERSION, "layers": layers}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    save_file(tensors, str(tmp / TENSORS))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _replace_dir(tmp, path)


def _replace_dir(tmp: Path, path: Path) -> None:
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        os.replace(path, old)
        os.replace(tmp, path)
        import shutil

        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def load_results(path: str | Path) -> dict[str, QuantizationResult]:
    from .plugins import get_quantizer

    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} holds no saved results ({MANIFEST} is missing)")
    manifest = json.loads(manifest_path.read_text())
    tensors = load_file(str(path / TENSORS))
    results: dict[str, QuantizationResult] = {}
    for name, entry in manifest["layers"].items():
        cls = get_quantizer(entry["method"]).result_type
        if cls.__name__ != entry["class"]:
            raise ValueError(
                f"{name}: saved as {entry['class']}, but method "
                f"{entry['method']!r} now produces {cls.__name__}"
            )
        prefix = f"{name}::"
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        result = cls.from_state(own, entry["fields"])
        result._method = entry["method"]
        results[name] = result
    return results
