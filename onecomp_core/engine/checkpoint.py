"""Per-block checkpoints, so a crash in hour three does not lose hours one and two.

After every block the Runner stores that block's results and the inputs of
the next block (safetensors), then rewrites a JSON manifest naming the last
finished block. Every file is written under a temporary name and renamed, so
a checkpoint folder is always consistent. A fingerprint of the model, the
quantizer config, the layer selection and the calibration tokens guards
against resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..contract import LayerResult
from ..storage.atomic import atomic_file, write_json
from ..storage.reading import read_json_object
from ..storage.results_io import load_results, save_results

MANIFEST = "manifest.json"


def fingerprint(parts: dict[str, Any]) -> str:
    """sha256 of the JSON of everything that decides a run's result."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class BlockCheckpoint:
    """One run's progress: per-block results, other block tensors, next inputs, a manifest."""

    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def _manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        return read_json_object(path)  # a damaged manifest is named (h13a's version supersedes)

    def finished_blocks(self) -> int:
        """How many blocks a previous run finished (0 for a fresh folder)."""
        manifest = self._manifest()
        if manifest is None:
            return 0
        if manifest["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"checkpoint folder {self.folder} belongs to a different run (model, quantizer "
                "config, layer selection or calibration data differ); use another "
                "--checkpoint-dir or delete this one"
            )
        return int(manifest["finished_blocks"])

    def save_block(
        self,
        index: int,
        results: dict[str, LayerResult],
        streams: dict[str, list[torch.Tensor]],
        rest: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Store block ``index``'s results, its other tensors and the next block's inputs.

        ``rest`` holds the block's tensors outside the quantized weights (norms,
        biases), which per-block hooks such as fine-tuning may have changed.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        save_results(results, self.folder / f"block_{index:04d}")
        if rest:
            _save_tensors(rest, self.folder / f"rest_{index:04d}.safetensors")
        tensors = {
            f"{stream}.{i}": t for stream, batches in streams.items() for i, t in enumerate(batches)
        }
        _save_tensors(tensors, self.folder / f"inputs_{index + 1:04d}.safetensors")
        manifest = {"fingerprint": self.fingerprint, "finished_blocks": index + 1}
        write_json(self.folder / MANIFEST, {**manifest, "streams": list(streams)})
        old = self.folder / f"inputs_{index:04d}.safetensors"
        if old.exists():
            old.unlink()

    def load_results(self, finished: int) -> dict[str, LayerResult]:
        results: dict[str, LayerResult] = {}
        for index in range(finished):
            results.update(load_results(self.folder / f"block_{index:04d}"))
        return results

    def load_rest(self, index: int) -> dict[str, torch.Tensor]:
        path = self.folder / f"rest_{index:04d}.safetensors"
        return load_file(str(path)) if path.is_file() else {}

    def load_streams(self, finished: int, device: torch.device) -> dict[str, list[torch.Tensor]]:
        tensors = load_file(str(self.folder / f"inputs_{finished:04d}.safetensors"))
        streams: dict[str, list[torch.Tensor]] = {}
        for key in sorted(tensors, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
            stream = key.split(".")[0]
            streams.setdefault(stream, []).append(tensors[key].to(device))
        return streams


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
