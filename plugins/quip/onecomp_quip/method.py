"""The QuIP method: full H per layer, incoherence processing + LDLQ, a factored inference layer.

The input transform's seed is ``seed`` and the output transform's
``seed + 1`` for every rotated layer (the seeds are saved in each layer's
row, so a loader rebuilds exactly the transforms the codes were made in).
Layers outside ``incoherent_layers``, and with ``only_if_better`` those whose
proxy error the transforms do not lower, are solved by plain LDLQ (seeds
None, d = 1): the same codes GPTQ would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from onecomp_core.contract import LayerJob, LayerResult, Needs
from onecomp_core.kernels import orthogonal_transform
from torch import nn

from .config import QuIPConfig
from .incoherence import proxy_error, quip_quantize
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
        weight, hessian = job.weight, hessian.to(job.weight.device)
        out_f, in_f = weight.shape
        in_seed, out_seed = self.seed, self.seed + 1
        solve = {
            "spec": self.grid_spec(),
            "groupsize": self.groupsize,
            "actorder": self.actorder,
            "percdamp": float(self.percdamp),
            "row_shrinks": self.row_shrinks(),
        }
        if self.incoherent(job.name):
            u, v = orthogonal_transform(out_f, out_seed), orthogonal_transform(in_f, in_seed)
            out = quip_quantize(weight, hessian, u, v, rescale=self.rescale, **solve)
            if self.only_if_better:
                plain = quip_quantize(weight, hessian, None, None, rescale=False, **solve)
                if proxy_error(weight, hessian, plain, None, None) <= proxy_error(
                    weight, hessian, out, u, v
                ):
                    out, in_seed, out_seed = plain, None, None
        else:
            out = quip_quantize(weight, hessian, None, None, rescale=False, **solve)
            in_seed, out_seed = None, None
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
            if key not in row:
                raise ValueError(f"{key} missing: a QuIP layer row names its transforms' seeds")
            value = row[key]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{key}={value!r}: a QuIP layer row's seed is null or >= 0")
            seeds[key] = value
        return QuIPLinear.from_row(row, **seeds)
