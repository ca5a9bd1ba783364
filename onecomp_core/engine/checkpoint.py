"""Per-block checkpoints, so a crash in hour three does not lose hours one and two.

After every block the Runner stores that block's results and the inputs of
the next block (safetensors), then rewrites a JSON manifest naming the last
finished block. Every file is written under a temporary name and renamed, so
a checkpoint folder is always consistent.

The manifest also holds the run's *resume key* (see
:mod:`onecomp_core.data.fingerprint`): the model's weights, config and
tokenizer by content, the calibration windows, every setting that changes
the result and the versions of the code. A run resumes a folder only when
its key is equal; otherwise it stops with one line saying which part
differs, before any long work where that part is known early. A run holds
the folder's lock (:mod:`onecomp_core.storage.lock`) while it writes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..contract import LayerResult
from ..data.fingerprint import differences
from ..storage import lock
from ..storage.atomic import atomic_file, remove_leftovers_in, write_json
from ..storage.results_io import load_results, save_results

MANIFEST = "manifest.json"
#: what a checkpoint folder may hold; --restart deletes nothing else
_OURS = re.compile(
    r"(manifest\.json|block_\d{4}|(rest|inputs)_\d{4}\.safetensors|\.lock|\..+\.(partial|old)-.+)"
)
_ADVICE = "pass restart=True (CLI: --restart) to start over, or use another checkpoint folder"


class CheckpointMismatch(ValueError):
    """The checkpoint folder holds another run; ``problem`` says what differs, without advice."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{problem}; {_ADVICE}")


class BlockCheckpoint:
    """One run's progress: per-block results, other block tensors, next inputs, a manifest.

    ``key`` grows as the run learns its parts (:meth:`expect`); the whole key
    is compared once more in :meth:`finished_blocks` and stored with every block.
    """

    def __init__(self, folder: str | Path, key: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.key: dict[str, Any] = dict(key or {})

    # -- the folder ------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[BlockCheckpoint]:
        """Hold the folder's lock; temporary files of killed writers inside are removed."""
        with lock.holding(lock.inside(self.folder), f"checkpoint folder {self.folder}"):
            remove_leftovers_in(self.folder)
            yield self

    def discard(self) -> None:
        """Delete what an earlier run stored here (refused if the folder holds other files)."""
        if not self.folder.is_dir():
            return
        entries = sorted(self.folder.iterdir())
        foreign = [p.name for p in entries if not _OURS.fullmatch(p.name)]
        if foreign:
            raise ValueError(
                f"refusing to empty {self.folder}: it holds {foreign[0]!r}, which is not a "
                "onecomp checkpoint file; choose another checkpoint folder"
            )
        for path in entries:
            if path.name == ".lock":
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    # -- the resume key ----------------------------------------------------------------------------
    def _manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
            int(manifest["finished_blocks"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointMismatch(
                f"checkpoint manifest {path} is unreadable ({type(err).__name__}: {err})"
            ) from None
        return manifest

    def expect(self, **parts: Any) -> None:
        """Add ``parts`` to the key; stop now if a stored run differs in any of them."""
        self.key.update(parts)
        self._compare(parts)

    def _compare(self, parts: dict[str, Any]) -> None:
        manifest = self._manifest()
        if manifest is None:
            return
        stored = manifest.get("key")
        if not isinstance(stored, dict):
            raise CheckpointMismatch(
                f"checkpoint in {self.folder} was made by an older onecomp (no content key)"
            )
        differ = differences({p: stored.get(p) for p in parts}, parts)
        if differ:
            raise CheckpointMismatch(
                f"checkpoint in {self.folder} was made with other {'; other '.join(differ)}"
            )

    def finished_blocks(self) -> int:
        """How many blocks a previous run with an equal key finished (0 for a fresh folder)."""
        manifest = self._manifest()
        if manifest is None:
            return 0
        stored = manifest.get("key")
        self._compare({**(stored if isinstance(stored, dict) else {}), **self.key})
        return int(manifest["finished_blocks"])

    # -- blocks ----------------------------------------------------------------------------------
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
        manifest = {"key": self.key, "finished_blocks": index + 1, "streams": list(streams)}
        write_json(self.folder / MANIFEST, manifest)
        old = self.folder / f"inputs_{index:04d}.safetensors"
        if old.exists():
            old.unlink()

    def load_results(self, finished: int) -> dict[str, LayerResult]:
        results: dict[str, LayerResult] = {}
        for index in range(finished):
            path = self.folder / f"block_{index:04d}"
            with _readable(path):
                results.update(load_results(path))
        return results

    def load_rest(self, index: int) -> dict[str, torch.Tensor]:
        path = self.folder / f"rest_{index:04d}.safetensors"
        if not path.is_file():
            return {}
        with _readable(path):
            return load_file(str(path))

    def load_streams(self, finished: int, device: torch.device) -> dict[str, list[torch.Tensor]]:
        path = self.folder / f"inputs_{finished:04d}.safetensors"
        with _readable(path):
            tensors = load_file(str(path))
        streams: dict[str, list[torch.Tensor]] = {}
        for key in sorted(tensors, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
            stream = key.split(".")[0]
            streams.setdefault(stream, []).append(tensors[key].to(device))
        return streams


@contextmanager
def _readable(path: Path) -> Iterator[None]:
    """A damaged or missing checkpoint file as one line naming it."""
    try:
        yield
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        if isinstance(err, CheckpointMismatch):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointMismatch(f"checkpoint file {path} is damaged ({reason})") from None


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
