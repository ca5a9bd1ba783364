"""Models that are never whole in memory: a meta-device skeleton fed from safetensors shards.

A real model does not fit in RAM or on one accelerator, but one block of it
does. :class:`StreamedModel` builds the model's skeleton on the meta device
(parameters take no memory; non-persistent buffers such as rotary
``inv_freq`` are real, as the model computes them) and an index of the
checkpoint's safetensors files. ``materialize(prefix, device)`` reads exactly
that submodule's tensors from disk to the compute device in the run's dtype;
``release(prefix)`` puts the meta tensors back, so the memory is freed.

:class:`ResidentModel` offers the same calls for a model already in memory
(the seed API, tests): materialize moves to the device, release moves back to
the CPU. The engine talks to either through these calls only, so there is
one code path.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class NotStreamable(ValueError):
    """The checkpoint cannot be streamed (pickle weights, keys transformers would convert)."""


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _modules(root: nn.Module, prefix: str, recurse: bool) -> list[tuple[str, nn.Module]]:
    return list(root.named_modules(prefix=prefix)) if recurse else [(prefix, root)]


def _direct_tensors(module: nn.Module) -> Iterator[tuple[str, str, torch.Tensor, bool]]:
    """(kind, local name, tensor, persistent) of ``module``'s own parameters and buffers."""
    for key, param in module._parameters.items():
        if param is not None:
            yield "param", key, param, True
    skip = getattr(module, "_non_persistent_buffers_set", set())
    for key, buf in module._buffers.items():
        if buf is not None:
            yield "buffer", key, buf, key not in skip


class ResidentModel:
    """A model in memory (on the CPU between blocks), behind the streamed model's calls."""

    streamed = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def materialize(
        self,
        prefix: str,
        device: torch.device | str,
        recurse: bool = True,
        skip: Collection[str] = (),
    ) -> nn.Module:
        """The submodule ``prefix`` moved to ``device`` (in memory: ``skip`` changes nothing)."""
        module = self.model.get_submodule(prefix)
        if recurse:
            return module.to(device)
        for kind, key, tensor, _ in list(_direct_tensors(module)):
            if kind == "param":
                tensor.data = tensor.data.to(device)
            else:
                module._buffers[key] = tensor.to(device)
        return module

    def release(self, prefix: str, recurse: bool = True) -> None:
        """The submodule ``prefix`` moved back to the CPU."""
        self.materialize(prefix, "cpu", recurse)

    @contextmanager
    def outside(self, blocks: str, device: torch.device | str) -> Iterator[None]:
        """Everything but the blocks (embeddings, rotary tables, final norm) on ``device``."""
        self._outside_to(blocks, device)
        try:
            yield
        finally:
            self._outside_to(blocks, torch.device("cpu"))

    def _outside_to(self, blocks: str, device: torch.device | str) -> None:
        inside = self.model.get_submodule(blocks)
        held = {id(t) for t in [*inside.parameters(), *inside.buffers()]}
        for module in self.model.modules():
            for _, p in module.named_parameters(recurse=False):
                if id(p) not in held:
                    p.data = p.data.to(device)
            for key, b in list(module._buffers.items()):
                if b is not None and id(b) not in held:
                    module._buffers[key] = b.to(device)


class StreamedModel:
    """A skeleton on the meta device whose submodules are read from disk when asked for.

    ``transposed``: the parameter names whose checkpoint tensor is the
    transpose of the model's (GPT-2's Conv1D layers after they became Linears).
    """

    streamed = True

    def __init__(
        self,
        model: nn.Module,
        folder: str | Path,
        dtype: torch.dtype,
        transposed: set[str] | None = None,
    ) -> None:
        self.model, self.folder, self.dtype = model, Path(folder), dtype
        self.transposed = set(transposed or ())
        self.files = shard_files(self.folder)
        self.keys = resolve_keys(model, self.files, self.transposed)
        #: the skeleton's own meta tensors, put back by release (ties come back with them)
        self._meta = {
            (name, key): tensor
            for name, module in model.named_modules()
            for _, key, tensor, _ in _direct_tensors(module)
            if tensor.device.type == "meta"
        }

    # -- reading --------------------------------------------------------------------------------
    def read(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """The tensor the model calls ``name``, from disk, on ``device`` in the run's dtype.

        The file is opened for this read only: an open file keeps every page read
        through it mapped into the process, so the whole model would stay resident.
        """
        from safetensors import safe_open

        key = self.keys[name]
        with safe_open(str(self.folder / self.files[key]), framework="pt") as handle:
            tensor = handle.get_tensor(key)
        if name in self.transposed:
            tensor = tensor.t()
        if tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        return tensor.to(device).contiguous()

    def materialize(
        self,
        prefix: str,
        device: torch.device | str,
        recurse: bool = True,
        skip: Collection[str] = (),
    ) -> nn.Module:
        """The submodule ``prefix`` with its tensors read from disk onto ``device``
        (``recurse=False``: only the module's own tensors, not its children's); the
        modules named in ``skip`` stay on the meta device (not read)."""
        root = self.model.get_submodule(prefix)
        for name, module in _modules(root, prefix, recurse):
            if name not in skip:
                self._fill(name, module, device)
        return root

    def _fill(self, name: str, module: nn.Module, device: torch.device | str) -> None:
        for kind, key, tensor, _ in list(_direct_tensors(module)):
            full = f"{name}.{key}" if name else key
            if kind == "buffer":
                if tensor.device.type != "meta":
                    module._buffers[key] = tensor.to(device)
                elif full in self.keys:
                    module._buffers[key] = self.read(full, device)
                continue
            if tensor.device.type == "meta" or tensor.device != torch.device(device):
                data = (
                    self.read(full, device) if tensor.device.type == "meta" else tensor.to(device)
                )
                module._parameters[key] = nn.Parameter(data, requires_grad=tensor.requires_grad)

    def release(self, prefix: str, recurse: bool = True) -> None:
        """The submodule ``prefix`` back on the meta device: its memory is freed."""
        for name, module in _modules(self.model.get_submodule(prefix), prefix, recurse):
            self._empty(name, module)

    def _empty(self, name: str, module: nn.Module) -> None:
        for kind, key, _, _ in list(_direct_tensors(module)):
            meta = self._meta.get((name, key))
            if meta is None:
                continue  # a real buffer of the skeleton (rotary tables): kept
            if kind == "param":
                module._parameters[key] = meta
            else:
                module._buffers[key] = meta

    @contextmanager
    def outside(self, blocks: str, device: torch.device | str) -> Iterator[None]:
        """Modules outside the blocks read from disk when they run (and freed at the end).

        Only what actually runs is read: capturing block 0's inputs stops at
        block 0, so the embeddings are read and the head is not.
        """
        used: list[str] = []

        def hook_for(name: str):
            def hook(module: nn.Module, args: tuple) -> None:
                self._fill(name, module, device)
                used.append(name)

            return hook

        handles = [
            module.register_forward_pre_hook(hook_for(name))
            for name, module in self.model.named_modules()
            if not _under(name, blocks) and any(True for _ in _direct_tensors(module))
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for name in used:
                self._empty(name, self.model.get_submodule(name))

    def outer_modules(self, blocks: str) -> list[str]:
        """Names of the modules outside the blocks that hold saved tensors, in model order."""
        return [
            name
            for name, module in self.model.named_modules()
            if not _under(name, blocks)
            and any(persistent for _, _, _, persistent in _direct_tensors(module))
        ]


# -- the checkpoint's files and keys ------------------------------------------------------------
def shard_files(folder: Path) -> dict[str, str]:
    """Checkpoint key → the safetensors file (in ``folder``) that holds it."""
    index = folder / INDEX_NAME
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = folder / WEIGHTS_NAME
    if not single.is_file():
        raise NotStreamable(
            f"{folder} has no {WEIGHTS_NAME} or {INDEX_NAME} (only safetensors checkpoints "
            "are streamed)"
        )
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), WEIGHTS_NAME)


def resolve_keys(model: nn.Module, files: dict[str, str], transposed: set[str]) -> dict[str, str]:
    """Model tensor name → checkpoint key, as transformers matches them.

    A key may carry or lack the base model's prefix (``model.``); a tied
    parameter (``lm_head.weight`` ↔ ``model.embed_tokens.weight``) missing
    from the checkpoint is read from the key of the tensor it is tied to.
    Every parameter must be found, else :class:`NotStreamable` names them.
    """
    base = getattr(model, "base_model_prefix", "") or ""
    found: dict[str, str] = {}
    first_name: dict[int, str] = {}
    missing: list[str] = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for kind, key, tensor, persistent in _direct_tensors(module):
            name = f"{module_name}.{key}" if module_name else key
            if not persistent:
                continue
            for candidate in (name, f"{base}.{name}", name.removeprefix(f"{base}.")):
                if candidate in files:
                    found[name] = candidate
                    break
            else:
                tied = first_name.get(id(tensor))
                if tied in found:
                    found[name] = found[tied]
                elif kind == "param":
                    missing.append(name)
            first_name.setdefault(id(tensor), name)
    for name in [n for n in missing if id(model.get_parameter(n)) in first_name]:
        tied = first_name[id(model.get_parameter(name))]
        if tied in found:
            found[name] = found[tied]
            missing.remove(name)
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise NotStreamable(
            f"checkpoint keys do not match the model's parameters: {', '.join(missing[:5])}{more}"
        )
    return found


def open_streamed(
    folder: str | Path, dtype: torch.dtype, trust_remote_code: bool = False
) -> StreamedModel:
    """The model in ``folder`` as a skeleton plus shard index, in eval mode, caches off."""
    import transformers as tf
    from accelerate import init_empty_weights

    from .adapters import linearize_conv1d
    from .model import is_causal

    folder = Path(folder)
    shard_files(folder)  # refuses a folder without safetensors before building anything
    config = tf.AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    loader = tf.AutoModelForCausalLM if is_causal(config) else tf.AutoModel
    with init_empty_weights(include_buffers=False):
        model = loader.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_pretrained ties after loading; a meta skeleton is not tied yet
    conv1d = {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    linearize_conv1d(model)
    model.config.use_cache = False
    return StreamedModel(model.eval(), folder, dtype, {f"{n}.weight" for n in conv1d})
