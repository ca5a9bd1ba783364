"""``MDBFResult``: one layer's packed paths (signs and envelopes), what made them, its bits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp_core.contract import LayerResult
from onecomp_core.kernels import unpack_signs

from .envelope import Path, compose, mdbf_bits


@dataclass
class MDBFResult(LayerResult):
    """Per path i: ``sign_a[i]`` (p × r) and ``sign_b[i]`` (r × m) packed uint8 signs;
    ``env_a`` (P, p, l), ``env_qu`` (P, r, l), ``env_qv`` (P, r, l), ``env_b`` (P, m, l) fp16.

    Ŵ = Σ_i (S_A ⊙ A·Q_Uᵀ)·(S_B ⊙ Q_V·Bᵀ). When the fit failed (``is_quantized``
    False) the factors are None and ``dequantized_weight`` holds the dense weight.
    """

    sign_a: torch.Tensor | None = None
    sign_b: torch.Tensor | None = None
    env_a: torch.Tensor | None = None
    env_qu: torch.Tensor | None = None
    env_qv: torch.Tensor | None = None
    env_b: torch.Tensor | None = None
    is_quantized: bool = True
    out_features: int = 0
    in_features: int = 0
    rank: int = 0
    envelopes: int = 1
    paths: int = 1
    dense_dtype: str = "float16"
    target_bits: float = 1.0
    budget: str = "signs"
    activation_aware: bool = True
    finetuned: bool = False

    def path_list(self) -> list[Path]:
        """The paths with unpacked ±1 signs and fp32 envelopes."""
        p, m, r = self.out_features, self.in_features, self.rank
        return [
            Path(
                unpack_signs(self.sign_a[i], p, r),
                self.env_a[i].float(),
                self.env_qu[i].float(),
                unpack_signs(self.sign_b[i], r, m),
                self.env_qv[i].float(),
                self.env_b[i].float(),
            )
            for i in range(self.paths)
        ]

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        if not self.is_quantized:
            return self.dequantized_weight.to(device or "cpu", torch.float16)
        return compose(self.path_list()).to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        if not self.is_quantized:
            return {"is_quantized": False, "dense_dtype": self.dense_dtype}
        return {
            "is_quantized": True,
            "rank": self.rank,
            "envelopes": self.envelopes,
            "paths": self.paths,
            "target_bits": self.target_bits,
        }

    def effective_bits(self, out_features: int, in_features: int) -> float:
        """Signs plus fp16 envelopes per weight (16 for a dense fallback)."""
        if not self.is_quantized:
            return 16.0
        return mdbf_bits(out_features, in_features, self.rank, self.envelopes, self.paths)
