"""The rotation of a streamed model: each part rotated as it is read from disk.

A streamed run never holds the whole model, so the rotation of
:mod:`onecomp_core.transforms.rotation` cannot be folded in once up front.
:class:`RotatedStreamedModel` is a :class:`~onecomp_core.data.streamed.StreamedModel`
whose reads come back rotated: a block when it is materialized (its norms
folded, its linears rotated), the embeddings, the final norm (ones) and the
head (the final norm's scale folded) whenever they are read, for the
calibration capture or for the output's outer shards. The skeleton's head is
untied from the embeddings first (the head reads the embeddings' tensor from
disk, then takes the norm). The online pre-hooks sit on the skeleton's
``down_proj`` modules, which stay the same objects through every read.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn

from ..data.streamed import StreamedModel
from .rotation import Rotation, unsupported_reason, untie_head


class RotatedStreamedModel(StreamedModel):
    """A streamed model whose parts are rotated as they are read (see the module docstring)."""

    def __init__(self, source: StreamedModel, blocks: str, seed: int = 0) -> None:
        model = source.model
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"--rotate: {reason}")
        # the keys are resolved while the head is still tied (it reads the embeddings' key)
        super().__init__(model, source.folder, source.dtype, source.transposed)
        self.rotation = Rotation(model.config, seed)
        self.blocks = blocks
        self._embed = _name_of(model, model.get_input_embeddings())
        self._head = _name_of(model, model.get_output_embeddings())
        self._norm = _name_of(model, model.model.norm)
        untie_head(model)
        self._meta[(self._head, "weight")] = model.get_output_embeddings().weight
        online = {}
        for index, block in enumerate(model.get_submodule(blocks)):
            down = block.mlp.down_proj
            online[f"{blocks}.{index}.mlp.down_proj"] = {
                "width": down.in_features,
                "seed": self.rotation.online_seed,
            }
        #: what ``quantization_config["rotation"]`` records (the same as the whole-model path)
        self.spec: dict[str, Any] = self.rotation.spec(online)

    def materialize(
        self,
        prefix: str,
        device: torch.device | str,
        recurse: bool = True,
        skip: Collection[str] = (),
    ) -> nn.Module:
        """As :meth:`StreamedModel.materialize`; a block read from disk comes back rotated
        (whole: its rotation reads every layer, so ``skip`` reads them too)."""
        root = self.model.get_submodule(prefix)
        fresh = recurse and _is_block(prefix, self.blocks) and _on_meta(root)
        module = super().materialize(prefix, device, recurse)
        if fresh:
            self.rotation.block(module)
        return module

    def _fill(self, name: str, module: nn.Module, device: torch.device | str) -> None:
        fresh = name in (self._embed, self._head, self._norm) and _on_meta(module)
        super()._fill(name, module, device)
        if not fresh:
            return
        if name == self._embed:
            self.rotation.embedding(module)
        elif name == self._head:
            self.rotation.head(module, self.read(f"{self._norm}.weight", device))
        else:
            module.weight.data = torch.ones_like(module.weight)


def _on_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def _is_block(prefix: str, blocks: str) -> bool:
    head, _, index = prefix.rpartition(".")
    return head == blocks and index.isdigit()


def _name_of(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)
