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
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .result import QuantizationResult
from .results_io import load_results, save_results

MANIFEST = "manifest.json"


def fingerprint(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class BlockCheckpoint:
    def __init__(self, folder: str | Path, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def _manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        return json.loads(path.read_text())

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
        results: dict[str, QuantizationResult],
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
            tmp = self.folder / f".rest_{index:04d}.tmp"
            save_file({k: v.detach().cpu().contiguous() for k, v in rest.items()}, str(tmp))
            os.replace(tmp, self.folder / f"rest_{index:04d}.safetensors")
        tensors = {
            f"{stream}.{i}": t.detach().cpu().contiguous()
            for stream, batches in streams.items()
            for i, t in enumerate(batches)
        }
        tmp = self.folder / f".inputs_{index + 1:04d}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, self.folder / f"inputs_{index + 1:04d}.safetensors")
        self._write_manifest(index + 1, list(streams))
        old = self.folder / f"inputs_{index:04d}.safetensors"
        if old.exists():
            old.unlink()

    def _write_manifest(self, finished: int, streams: list[str]) -> None:
        manifest = {
            "fingerprint": self.fingerprint,
            "finished_blocks": finished,
            "streams": streams,
        }
        tmp = self.folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.folder / MANIFEST)

    def load_results(self, finished: int) -> dict[str, QuantizationResult]:
        results: dict[str, QuantizationResult] = {}
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

    def clear(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
