"""Argument parsing shared by the commands: ``--set KEY=VALUE`` and model/device choices."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def parse_settings(pairs: list[str], option: str = "--set") -> dict[str, Any]:
    """``["wbits=4", "sym=true", "module_wbits={...}"]`` → dict; values parsed as JSON when possible."""
    settings: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {pair!r}: expected KEY=VALUE, e.g. {option} wbits=4")
        try:
            settings[key] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key] = raw
    return settings


def resolve_dtype(dtype: str, device: str) -> str:
    """ "auto" means float16 on a GPU and float32 on the CPU (fp16 matmuls are slow there)."""
    if dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"--dtype {dtype!r}: expected auto, float32, float16 or bfloat16")
        return dtype
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "float16" if on_gpu else "float32"


def model_config(model: str, dtype: str, device: str):
    """A ModelConfig for a local folder or a hub id."""
    from ..data.model import ModelConfig

    dtype = resolve_dtype(dtype, device)
    looks_local = Path(model).exists() or model.startswith((".", "/", "~"))
    if looks_local:
        return ModelConfig(path=str(Path(model).expanduser()), dtype=dtype, device=device)
    return ModelConfig(model_id=model, dtype=dtype, device=device)


def add_model_options(parser) -> None:
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (float16 on GPU, float32 on CPU), float32, float16, bfloat16",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda:N")


def quiet_requested(flag: bool) -> bool:
    """``--quiet``, or ``ONECOMP_QUIET`` set to anything but empty or 0 (as the README says)."""
    return flag or os.environ.get("ONECOMP_QUIET", "") not in ("", "0")


def silence_progress() -> None:
    """No progress bars from the libraries either (transformers' loading, the hub's downloads)."""
    try:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as tf_logging

        disable_progress_bars()
        tf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def add_context_option(parser) -> None:
    parser.add_argument(
        "--allow-longer-context",
        action="store_true",
        help="run windows longer than the model's max_position_embeddings (normally refused)",
    )
