"""The GPTQ method: what it needs from the engine, and its per-layer hooks.

GPTQ needs the full H = (2/N)·XᵀX of each layer's inputs and, with
``true_sequential``, sub-groups quantized in turn; it has no lifecycle hooks.
The bits and group size of a layer come from its name (``job.name``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from onecomp_core.contract import LayerJob, LayerResult, Needs
from onecomp_core.kernels import gptq_effective_bits
from torch import nn

from .config import GPTQConfig
from .gptq import GPTQOutput, gptq_quantize
from .layer import GPTQLinear
from .result import GPTQResult


@dataclass
class GPTQ(GPTQConfig):
    """GPTQ with the seed system's parameter names (see :class:`GPTQConfig`)."""

    method: ClassVar[str] = "gptq"
    result_type: ClassVar[type[LayerResult]] = GPTQResult
    bits_param: ClassVar[str] = "wbits"

    def needs(self) -> Needs:
        return Needs(inputs="full", sequential=self.true_sequential)

    # -- bits ---------------------------------------------------------------------------
    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        return gptq_effective_bits(self.layer_bits(name), self.layer_groupsize(name), shape[1])

    # -- the per-layer hooks --------------------------------------------------------------
    def quantize_layer(self, job: LayerJob) -> GPTQResult:
        box = [job.take_hessian()]  # handed on: the solve frees H once its factor is made
        if box[0] is None or box[0].dim() != 2:
            raise ValueError("GPTQ needs the full Hessian H = (2/N)·XᵀX of the layer's inputs")
        bits, groupsize = self.layer_bits(job.name), self.layer_groupsize(job.name)
        weight = job.weight
        box[0] = box[0].to(weight.device)
        out: GPTQOutput = gptq_quantize(
            weight,
            box,
            self.grid_spec(bits),
            groupsize=groupsize,
            actorder=self.actorder,
            percdamp=float(self.percdamp),
            blocksize=self.blocksize,
            static_groups=self.static_groups,
            row_shrinks=self.row_shrinks(),
        )
        return GPTQResult(
            codes=out.codes,
            scales=out.scales,
            zeros=out.zeros,
            g_idx=out.g_idx,
            bits=bits,
            groupsize=groupsize,
            sym=self.sym,
            actorder=self.actorder,
            checkpoint_format=self.checkpoint_format,
            damping=out.damping,
            fallback=out.fallback,
        )

    # -- rows solved apart (a distributed run splits every layer's rows over its processes) ----
    def row_block(self, job: LayerJob) -> int:
        """GPTQ's rows are independent given H (the act-order permutation, the inverse factor
        and the clipping search all come from H or from one row): any slice solves on its own.
        Slices start at multiples of 64 rows, so the kernel's row blocks stay whole."""
        return 64

    def join_rows(self, parts: list[GPTQResult]) -> GPTQResult | None:
        """The slices' codes, scales and zeros stacked; None if a slice fell back (to RTN) alone."""
        if len({p.fallback for p in parts}) > 1:
            return None
        stack = {k: torch.cat([getattr(p, k) for p in parts]) for k in ("codes", "scales", "zeros")}
        return dataclasses.replace(parts[0], **stack)

    def inference_layer(self, result: GPTQResult, linear: nn.Module) -> GPTQLinear:
        return GPTQLinear.from_codes(
            result.codes,
            result.scales,
            result.zeros,
            result.g_idx,
            result.bits,
            getattr(linear, "bias", None),
            checkpoint_format=result.checkpoint_format,
        )

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> GPTQLinear:
        return GPTQLinear.from_row(row, checkpoint_format=row.get("checkpoint_format", "gptq"))
