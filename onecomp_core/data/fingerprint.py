"""Content fingerprints: what a run's result depends on, by content and never by path.

A resume key is a dict of named parts ("model weights", "tokenizer",
"settings", ...), each a digest or a small dict of digests. Two runs may
share a checkpoint exactly when their keys are equal; :func:`differences`
names the parts that are not, so a refusal can say *what* differs. Paths
never enter a key: the same model copied elsewhere has the same key, and
the same folder with other weights has another.

Weight files are hashed by their bytes (sha256). A 100 GB model is read
once: digests are cached per file under the user's cache folder
(``$XDG_CACHE_HOME/onecomp/hashes.json``, else ``~/.cache/onecomp``), keyed
by the file's real path, size, inode, mtime and ctime (ctime cannot be set
back by tools such as ``touch``), and trusted only when the file had not
changed in the two seconds before it was hashed (a coarse file-system clock
could otherwise hide a second write).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..storage.atomic import write_json

#: weight files transformers loads; safetensors win when a folder has both kinds
_SAFETENSORS = (".safetensors",)
_PICKLED = (".bin", ".pt", ".pth")
#: files that decide how text becomes tokens
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")
#: files that decide the architecture (remote code included)
_MODEL_CONFIG = ("config.json",)
_CHUNK = 16 << 20
#: a file changed this recently when hashed is hashed again next time
_SETTLE_NS = 2_000_000_000


def cache_file() -> Path:
    """Where file digests are cached (``$XDG_CACHE_HOME/onecomp/hashes.json``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onecomp" / "hashes.json"


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_digests(paths: list[Path], cache: Path | None = None) -> dict[str, str]:
    """sha256 of each file's bytes, keyed by file name; cached by (size, inode, mtime, ctime).

    ``cache`` defaults to :func:`cache_file`; an unwritable cache only costs the re-hash.
    """
    cache = cache_file() if cache is None else cache
    known = _read_cache(cache)
    digests: dict[str, str] = {}
    changed = False
    for path in paths:
        real = os.path.realpath(path)
        stat = os.stat(real)
        entry = known.get(real)
        if isinstance(entry, dict) and entry.get("stamp") == _stamp(stat):
            digests[path.name] = entry["sha256"]
            continue
        started = time.time_ns()
        digests[path.name] = _sha256(real)
        if os.stat(real).st_mtime_ns == stat.st_mtime_ns and (
            started - stat.st_mtime_ns > _SETTLE_NS
        ):
            known[real] = {"stamp": _stamp(stat), "sha256": digests[path.name]}
            changed = True
    if changed:
        try:
            write_json(cache, known, indent=0)
        except OSError:
            pass
    return digests


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(folder: Path) -> dict[str, list[Path]]:
    """The files of a model folder that decide a run's result, by part.

    "model weights": the safetensors files (else the pickled ones, which
    transformers would load instead); "model config": ``config.json`` and
    remote code; "tokenizer": the tokenizer's files. Only the folder's top
    level: transformers reads nothing below it (e.g. Llama's ``original/``).
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    weights = [p for p in files if p.name.endswith(_SAFETENSORS)]
    if not weights:
        weights = [p for p in files if p.name.endswith(_PICKLED)]
    config = [p for p in files if p.name in _MODEL_CONFIG or p.suffix == ".py"]
    tokenizer = [
        p
        for p in files
        if p.name.startswith(_TOKENIZER_PREFIXES) or p.name.endswith(_TOKENIZER_SUFFIXES)
    ]
    return {"model weights": weights, "model config": config, "tokenizer": tokenizer}


def folder_key(folder: str | Path, cache: Path | None = None) -> dict[str, dict[str, str]]:
    """The model parts of a resume key for a model folder: file name → sha256, per part."""
    parts = model_files(Path(folder))
    return {part: file_digests(paths, cache) for part, paths in parts.items()}


def tensors_key(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, str]]:
    """The "model weights" part for a model given in memory: tensor name → sha256.

    Each digest covers the dtype, the shape and the bytes, so a cast or a
    reshape is a difference too.
    """
    digests = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        digests[name] = digest.hexdigest()
    return {"model weights": digests}


def settings_digest(settings: Any) -> str:
    """sha256 of JSON settings (sorted keys), for parts too large to keep in full."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def config_settings(config: Any) -> dict[str, Any]:
    """Every user-settable parameter of a Config (saved or not) as JSON-ready values.

    ``to_dict`` leaves out what is not saved (the layer selection, AutoBit's
    candidate methods, DBF's ``flag_hessian``), yet those change a result too.
    A parameter that is itself a config (a candidate method) is expanded.
    """
    out: dict[str, Any] = {}
    if getattr(config, "method", None) is not None:
        out["method"] = config.method
    for name in type(config).parameters():
        out[name] = _setting(getattr(config, name))
    return out


def _setting(value: Any) -> Any:
    if hasattr(type(value), "parameters"):
        return config_settings(value)
    if isinstance(value, dict):
        return {str(k): _setting(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_setting(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> list[str]:
    """The parts of two keys that differ, each as "<part> (<what>)", in ``new``'s order.

    ``old`` is the stored key, ``new`` the current run's; parts missing on
    either side count as differing. A dict part names its entries that
    differ: files ("model.safetensors differs"), settings ("bits 3, now 4").
    """
    found = []
    for part in [*new, *(p for p in old if p not in new)]:
        a, b = old.get(part), new.get(part)
        if _normal(a) == _normal(b):
            continue
        detail = _detail(a, b, limit) if isinstance(a, dict) and isinstance(b, dict) else ""
        found.append(f"{part} ({detail})" if detail else part)
    return found


def _normal(value: Any) -> Any:
    """JSON round trip: a stored key (tuples read back as lists) compares equal to a fresh one."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _detail(old: dict[str, Any], new: dict[str, Any], limit: int) -> str:
    a, b = _flat(_normal(old)), _flat(_normal(new))
    items = []
    for key in [*b, *(k for k in a if k not in b)]:
        if key in a and key in b and a[key] == b[key]:
            continue
        if key not in a:
            items.append(f"{key} is new")
        elif key not in b:
            items.append(f"{key} is missing")
        elif _is_digest(a[key]) and _is_digest(b[key]):
            items.append(f"{key} differs")
        else:
            items.append(f"{key} {_show(a[key])}, now {_show(b[key])}")
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _is_digest(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
