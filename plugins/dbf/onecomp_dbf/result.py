"""``DBFResult``: one layer's packed factors, what produced them, and its bits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from onecomp_core.contract import LayerResult
from onecomp_core.kernels import unpack_signs

from .factors import binary_bits, compose, total_bits


@dataclass
class DBFResult(LayerResult):
    """Packed factors of one layer: Ŵ = diag(dbf_Da)·A·diag(dbf_mid)·B·diag(dbf_Db).

    ``dbf_A`` (n × k) and ``dbf_B`` (k × m) are packed signs (uint8, see
    :func:`onecomp_core.kernels.pack_signs`); the vectors are fp16. When the
    fit failed (``is_dbf_quantized`` False) the factors are None and
    ``dequantized_weight`` holds the original dense weight. The fields from
    ``target_bits`` on record the parameters that produced it (the seed's
    result fields; ``target_bits`` is the layer's resolved bits).
    """

    dbf_Da: torch.Tensor | None = None
    dbf_A: torch.Tensor | None = None
    dbf_mid: torch.Tensor | None = None
    dbf_B: torch.Tensor | None = None
    dbf_Db: torch.Tensor | None = None
    is_dbf_quantized: bool = True
    # packing metadata
    out_features: int = 0
    in_features: int = 0
    mid_features: int = 0
    dense_dtype: str = "float16"
    # the config that produced it
    target_bits: float = 1.5
    iters: int = 0
    reg: float = 0.0
    use_balancing: bool = False
    balance_iters: int = 0
    balance_alpha: float = 1.0
    balance_mode: str = "l1"
    use_adaptive_rho: bool = False
    weighting: str = "activation"
    seed: int = 0
    finetuned: bool = False

    def signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_A, S_B) unpacked to ±1 float32."""
        n, k, m = self.out_features, self.mid_features, self.in_features
        return unpack_signs(self.dbf_A, n, k), unpack_signs(self.dbf_B, k, m)

    def dequantize(self, device: torch.device | str | None = None) -> torch.Tensor:
        if not self.is_dbf_quantized:
            return self.dequantized_weight.to(device or "cpu", torch.float16)
        s_a, s_b = self.signs()
        w = compose(self.dbf_Da, s_a, self.dbf_mid, s_b, self.dbf_Db)
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        if not self.is_dbf_quantized:
            return {"is_dbf_quantized": False, "dense_dtype": self.dense_dtype}
        n, m, k = self.out_features, self.in_features, self.mid_features
        return {
            "is_dbf_quantized": True,
            "mid_features": k,
            "target_bits": self.target_bits,
            "binary_bits": binary_bits(n, m, k),
            "total_bits": total_bits(n, m, k),
        }

    def effective_bits(self, out_features: int, in_features: int) -> float:
        """Bits per weight including the fp16 vectors (16 for a dense fallback)."""
        if not self.is_dbf_quantized:
            return 16.0
        return total_bits(out_features, in_features, self.mid_features)
