"""What one quantized layer leaves behind: compact tensors plus JSON fields.

Method results subclass :class:`LayerResult` and keep compact tensors
(codes, packed bits, scales); they override :meth:`LayerResult.dequantize`
so the dense weight is only materialised on demand. Every dataclass field
must be a tensor, a JSON value, or None: that is what makes results storable
as safetensors + JSON without pickle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LayerResult:
    """Base result of quantizing one layer (``method`` names the method that made it)."""

    method: str = ""
    dequantized_weight: torch.Tensor | None = None
    quantization_time: float = 0.0
    output_squared_error: float | None = None
    mean_output_squared_error: float | None = None
    weight_squared_error: float | None = None
    mean_weight_squared_error: float | None = None
    relative_output_squared_error: float | None = None
    relative_weight_squared_error: float | None = None
    fallback: str | None = None  # why the method fell back for this layer, if it did

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The dense weight as an fp16 tensor (on CPU unless ``device`` says otherwise)."""
        if self.dequantized_weight is None:
            raise NotImplementedError(
                f"{type(self).__name__} holds no dense weight and does not override dequantize()"
            )
        return self.dequantized_weight.to(device or "cpu", torch.float16)

    def compute_dequantized_weight(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Seed-API name of :meth:`dequantize`."""
        return self.dequantize(device)

    def layer_config(self) -> dict[str, Any]:
        """Per-layer facts a loader needs to rebuild the inference layer (bits, k, ...)."""
        return {}

    def effective_bits(self, out_features: int, in_features: int) -> float | None:
        """Storage bits per weight including metadata; None when the method does not say."""
        return None

    def row(self, out_features: int, in_features: int, bias: bool) -> dict[str, Any]:
        """The saved per-layer table entry: method, shapes, what the loader needs, bits."""
        row = {
            "method": self.method,
            "in_features": in_features,
            "out_features": out_features,
            "bias": bias,
            **self.layer_config(),
        }
        bits = self.effective_bits(out_features, in_features)
        if bits is not None:
            row["effective_bits"] = round(bits, 6)
        return row

    # -- storage ---------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Split the fields into tensors (for safetensors) and JSON values."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value.detach().cpu().contiguous()
            else:
                meta[f.name] = value
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LayerResult:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in {**meta, **tensors}.items() if k in known}
        return cls(**values)
