"""The "hf" folder written while the model streams: one shard per block, then the rest.

A real model's packed copy does not fit in memory either, so the saved
folder is written as the run goes: after each block, that block's packed
layers (built exactly as :func:`~onecomp_core.storage.packed.packed_model`
builds them) and its other tensors become one safetensors shard of a
partial folder, and are freed. At the end come the tensors outside the
blocks (one module at a time), the shard index, ``config.json`` with the
``quantization_config`` a whole-model save writes, the tokenizer and the
generation config; then the partial folder is renamed into place. The keys
and values are those of :func:`~onecomp_core.storage.hf_folder.save`.

The partial folder may live in the checkpoint folder: a resumed run finds
the shards of the blocks it finished and writes only the rest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..contract import LayerResult, Method
from ..engine.offload import drop_tensors
from .atomic import atomic_file, follow_umask, move_into_place
from .hf_folder import INDEX_NAME
from .packed import packers
from .quant_method import label_config
from .save_dtype import record_dtype, unquantized_state

_GENERATION = "generation_config.json"


class ShardWriter:
    """Writes a model block by block into ``folder`` (a partial output folder)."""

    def __init__(
        self,
        folder: str | Path,
        source: Any,
        blocks: str,
        count: int,
        save_dtype: torch.dtype | None = None,
    ) -> None:
        """``source``: the streamed model; ``blocks``: the blocks' dotted path; ``count``: how
        many; ``save_dtype``: the dtype of the unquantized tensors (None: as they are)."""
        self.folder, self.source, self.blocks = Path(folder), source, blocks
        self.save_dtype = save_dtype
        self.outer = _outer_groups(source.model, blocks)
        self.total = count + len(self.outer)
        self.written = 0
        #: keep the results' tensors after their block is written (a model-level step such
        #: as DBF's distillation still needs them, and may change them: :meth:`rewrite_block`)
        self.keep_results = False
        self._pending: list[LayerResult] = []
        self.folder.mkdir(parents=True, exist_ok=True)

    def shard_name(self, number: int) -> str:
        return f"model-{number + 1:05d}-of-{self.total:05d}.safetensors"

    # -- per block -----------------------------------------------------------------------------
    def write_block(
        self,
        index: int,
        block: nn.Module,
        layers: Mapping[str, nn.Module],
        results: Mapping[str, LayerResult],
        method: Method,
    ) -> None:
        """Block ``index`` (materialized, results written back) as its shard."""
        if index == 0:  # a run from the start: shards of an earlier, different run go
            for stale in self.folder.glob("model-*.safetensors"):
                stale.unlink()
        prefix = f"{self.blocks}.{index}"
        self._drop_written()
        state = block_state(prefix, block, layers, results, method)
        self._write(index, unquantized_state(state, results, self.save_dtype))
        self.written += 1
        self._pending = [] if self.keep_results else list(results.values())

    def rewrite_blocks(
        self,
        changed: Iterable[str],
        layers: Mapping[str, nn.Module],
        results: Mapping[str, LayerResult],
        method: Method,
        fill: Callable[[str, nn.Module], None],
    ) -> None:
        """The shards of the blocks with a ``changed`` layer, written again: each block is
        read from disk, ``fill`` writes its results in, and it is freed after."""
        for index in range(self.total - len(self.outer)):
            name = f"{self.blocks}.{index}"
            own = {n: m for n, m in layers.items() if n.startswith(name + ".")}
            if not any(n in own for n in changed):
                continue
            block = self.source.materialize(name, "cpu")
            try:
                fill(name, block)
                mine = {n: results[n] for n in own}
                state = block_state(name, block, own, mine, method)
                self._write(index, unquantized_state(state, mine, self.save_dtype))
            finally:
                self.source.release(name)

    def _drop_written(self) -> None:
        """Free the tensors of the last written block's results: only their rows are needed
        from here on. Done one block late, once the checkpoint has saved them too."""
        for result in self._pending:
            drop_tensors(result)
        self._pending = []

    def _write(self, number: int, state: dict[str, torch.Tensor]) -> None:
        with atomic_file(self.folder / self.shard_name(number)) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})

    # -- the end ----------------------------------------------------------------------------------
    def finish(
        self,
        config: dict[str, Any],
        quantization_config: dict[str, Any],
        tokenizer: Any,
        model_folder: Path | None,
    ) -> None:
        """The tensors outside the blocks, the index, config.json, tokenizer, generation config."""
        self._drop_written()
        start = self.total - len(self.outer)
        for number, (module_name, keys) in enumerate(self.outer.items(), start):
            module = self.source.materialize(module_name, "cpu", recurse=False)
            state = {k: _saved(getattr(module, k.rpartition(".")[2])) for k in keys}
            self.source.release(module_name, recurse=False)
            self._write(number, unquantized_state(state, (), self.save_dtype))
        self._write_index()
        config = dict(config)
        if not config.get("architectures"):
            config["architectures"] = [type(self.source.model).__name__]
        if self.save_dtype is not None:
            config = record_dtype(config, self.save_dtype)
        config = label_config(config, quantization_config)
        (self.folder / "config.json").write_text(json.dumps(config, indent=2, default=str))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(self.folder))
        if model_folder is not None and (model_folder / _GENERATION).is_file():
            shutil.copyfile(model_folder / _GENERATION, self.folder / _GENERATION)

    def _write_index(self) -> None:
        weight_map: dict[str, str] = {}
        total = 0
        for number in range(self.total):
            name = self.shard_name(number)
            with safe_open(str(self.folder / name), framework="pt") as handle:
                for key in handle.keys():
                    weight_map[key] = name
                    piece = handle.get_slice(key)
                    total += _numel(piece.get_shape()) * _itemsize(piece.get_dtype())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=1))

    def publish(self, out: str | Path, overwrite: bool) -> Path:
        """Rename the finished folder to ``out`` (the previous ``out`` removed only after)."""
        follow_umask(self.folder)
        return move_into_place(self.folder, Path(out), overwrite)


def block_state(
    prefix: str,
    block: nn.Module,
    layers: Mapping[str, nn.Module],
    results: Mapping[str, LayerResult],
    method: Method,
) -> dict[str, torch.Tensor]:
    """The saved tensors of one block: its packed layers' and the rest, keyed by full name."""
    by_name = packers(method, results)
    packed: dict[str, nn.Module] = {}
    for name, result in results.items():
        linear = layers[name]
        layer = by_name[result.method or method.method].inference_layer(result, linear)
        packed[name] = layer.to(linear.weight.device)
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, tensor in block.state_dict(prefix=prefix + ".").items():
        if _inside(key, packed):
            continue
        ident = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and ident in seen:
            continue
        seen.add(ident)
        state[key] = _saved(tensor)
    for name, layer in packed.items():
        for key, tensor in layer.state_dict(prefix=name + ".").items():
            state[key] = _saved(tensor)
    return state


def _saved(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous()


def _inside(key: str, layers: Mapping[str, Any]) -> bool:
    while "." in key:
        key = key.rpartition(".")[0]
        if key in layers:
            return True
    return False


def _outer_groups(model: nn.Module, blocks: str) -> dict[str, list[str]]:
    """Module outside the blocks → the saved tensor names it holds itself (tied ones once)."""
    groups: dict[str, list[str]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if name == blocks or name.startswith(blocks + "."):
            continue
        skip = getattr(module, "_non_persistent_buffers_set", set())
        tensors = [
            *((k, t) for k, t in module._parameters.items() if t is not None),
            *((k, t) for k, t in module._buffers.items() if t is not None and k not in skip),
        ]
        for key, tensor in tensors:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            groups.setdefault(name, []).append(f"{name}.{key}" if name else key)
    return groups


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _itemsize(dtype: str) -> int:
    names = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2}
    return names.get(dtype, 2 if "16" in dtype else 1)
