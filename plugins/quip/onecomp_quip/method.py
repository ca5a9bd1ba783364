"""The QuIP method: full H per layer, incoherence processing + LDLQ, a factored inference layer.

The input transform's seed is ``seed`` and the output transform's
``seed + 1`` for every layer (the seeds are saved in each layer's row, so a
loader rebuilds exactly the transforms the codes were made in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from onecomp_core.contract import LayerJob, LayerResult, Needs
from onecomp_core.kernels import orthogonal_transform
from torch import nn

from .config import QuIPConfig
from .incoherence import quip_quantize
from .layer import QuIPLinear
from .result import QuIPResult, quip_effective_bits


@dataclass
class QuIP(QuIPConfig):
    """QuIP (Chee et al., 2023) with stored transforms (see :class:`QuIPConfig`)."""

    method: ClassVar[str] = "quip"
    result_type: ClassVar[type[LayerResult]] = QuIPResult
    bits_param: ClassVar[str] = "wbits"

    def needs(self) -> Needs:
        return Needs(inputs="full", sequential=True)

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        return quip_effective_bits(self.wbits, self.groupsize, shape[0], shape[1])

    def quantize_layer(self, job: LayerJob) -> QuIPResult:
        hessian = job.hessian
        if hessian is None or hessian.dim() != 2:
            raise ValueError("QuIP needs the full Hessian H = (2/N)·XᵀX of the layer's inputs")
        weight = job.weight
        out_f, in_f = weight.shape
        in_seed, out_seed = self.seed, self.seed + 1
        out = quip_quantize(
            weight,
            hessian.to(weight.device),
            orthogonal_transform(out_f, out_seed),
            orthogonal_transform(in_f, in_seed),
            self.grid_spec(),
            groupsize=self.groupsize,
            actorder=self.actorder,
            percdamp=float(self.percdamp),
            row_shrinks=self.row_shrinks(),
            rescale=self.rescale,
        )
        return QuIPResult(
            codes=out.codes,
            scales=out.scales,
            zeros=out.zeros,
            g_idx=out.g_idx,
            bits=self.wbits,
            groupsize=self.groupsize,
            sym=self.sym,
            input_scale=out.input_scale,
            in_seed=in_seed,
            out_seed=out_seed,
            actorder=self.actorder,
            damping=out.damping,
            fallback=out.fallback,
        )

    def inference_layer(self, result: QuIPResult, linear: nn.Module) -> QuIPLinear:
        return QuIPLinear.from_result(result, getattr(linear, "bias", None))

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> QuIPLinear:
        seeds = {}
        for key in ("in_seed", "out_seed"):
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}={value!r}: a QuIP layer row needs a seed >= 0")
            seeds[key] = value
        return QuIPLinear.from_row(row, **seeds)
