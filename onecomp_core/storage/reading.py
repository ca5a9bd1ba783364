"""Reading back what onecomp (or a model author) wrote: JSON and safetensors, checked.

A damaged file must fail in one line that names the file, not in a parser's
message ("Expecting value: line 2 column 1", "incomplete metadata") that
names nothing. Every reader of a manifest, config or tensor file goes through
here. Pickle files are never opened: unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

#: weight files in pickle formats, which onecomp never unpickles
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class DamagedFileError(ValueError):
    """A file onecomp reads is unreadable, truncated or not what its name says."""


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; a missing, unreadable or broken file is named in one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DamagedFileError(f"{path} is not a text file (expected JSON)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "the file is damaged or truncated"
        ) from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """:func:`read_json` for files that must hold a JSON object (configs, manifests)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DamagedFileError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file ``path``; a damaged file is named in one line."""
    path = Path(path)
    refuse_pickle(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedFileError(f"cannot read {path}: {_reason(exc)}") from None


def check_tensor_file(path: str | Path) -> None:
    """Read only the header of ``path``: refuses a truncated or foreign file cheaply.

    safetensors checks that the header's offsets cover the file exactly, so a
    file cut short (an interrupted download or copy) fails here, before any
    long work, without reading the tensors.
    """
    path = Path(path)
    refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedFileError(f"cannot read {path}: {_reason(exc)}") from None


def tensor_headers(folder: str | Path) -> dict[str, tuple[list[int], str]]:
    """Name → (shape, safetensors dtype such as "F16") of every tensor in ``folder``'s files.

    Only the headers are read (each file checked as :func:`check_tensor_file` does).
    """
    headers: dict[str, tuple[list[int], str]] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        check_tensor_file(path)
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                headers[key] = (list(piece.get_shape()), piece.get_dtype())
    return headers


def refuse_pickle(path: Path) -> None:
    """A pickle file is refused by name, with the way out."""
    if path.suffix in PICKLE_SUFFIXES:
        raise DamagedFileError(pickle_message(path))


def pickle_message(path: Path) -> str:
    return (
        f"{path} is a pickle file; onecomp never unpickles weights (it can run arbitrary "
        "code): convert it to safetensors first (transformers: "
        "model.save_pretrained(folder, safe_serialization=True))"
    )


def pickle_only(folder: Path) -> Path | None:
    """The first pickle weight file of ``folder`` when the folder has no safetensors at all."""
    if any(folder.glob("*.safetensors")):
        return None
    found = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    return found[0] if found else None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the file is corrupt or truncated ({text})"
