"""An example export format: the quantized model as one numpy ``.npz`` archive.

Every tensor of the model's state dict (the packed inference layers'
``qweight``/``scales``/... included) is stored under its state-dict name;
``__rows__`` holds the per-layer table and ``__quantization_config__`` the
saved config, both as JSON strings, so ``numpy.load(path)`` reads it all
without pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from onecomp_core.contract import Artifact

ROWS, CONFIG = "__rows__", "__quantization_config__"


def save_npz(artifact: Artifact, out: Path) -> None:
    """Write ``out`` when it ends in .npz, else ``out/model.npz`` (the folder is created)."""
    out = Path(out)
    path = out if out.suffix == ".npz" else out / "model.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: _array(t) for name, t in artifact.model.state_dict().items()}
    arrays[ROWS] = np.array(json.dumps(artifact.rows))
    arrays[CONFIG] = np.array(json.dumps(artifact.quantization_config))
    np.savez(path, **arrays)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """numpy has no bfloat16: such tensors are widened to float32 (exactly)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
