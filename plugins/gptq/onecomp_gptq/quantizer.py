"""The GPTQ method for onecomp: parameters, per-layer result, and the three hooks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from onecomp_core.grid import gptq_effective_bits
from onecomp_core.quantizer import Quantizer
from onecomp_core.result import QuantizationResult
from torch import nn

from .gptq import GPTQOutput, GridSpec, gptq_quantize
from .layer import ZERO_OFFSETS, GPTQLinear


@dataclass
class GPTQResult(QuantizationResult):
    """Compact result: uint8 codes (out, in), fp16 scales and uint8 zeros (out, groups), g_idx (in,).

    ``g_idx`` carries the act-order permutation (no separate ``perm``).
    """

    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None
    g_idx: torch.Tensor | None = None
    bits: int = 4
    groupsize: int = -1
    sym: bool = True
    actorder: bool = False
    checkpoint_format: str = "gptq"
    damping: float | None = None

    def compute_dequantized_weight(self, device=None) -> torch.Tensor:
        g = self.g_idx.long()
        w = self.scales.float()[:, g] * (self.codes.float() - self.zeros.float()[:, g])
        return w.to(device or "cpu", torch.float16)

    def layer_config(self) -> dict[str, Any]:
        return {
            "bits": self.bits,
            "groupsize": self.groupsize,
            "sym": self.sym,
            "desc_act": self.actorder,
            "checkpoint_format": self.checkpoint_format,
        }

    def effective_bits(self, out_features: int, in_features: int) -> float:
        return gptq_effective_bits(self.bits, self.groupsize, in_features)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bits_problem(name: str, value: Any) -> str | None:
    if _is_int(value) and 1 <= value <= 8:
        return None
    return f"{name}={value!r}: expected an integer from 1 to 8"


def _groupsize_problem(name: str, value: Any) -> str | None:
    if _is_int(value) and (value == -1 or value >= 1):
        return None
    return f"{name}={value!r}: expected -1 (one group per row) or an integer >= 1"


@dataclass
class GPTQ(Quantizer):
    """GPTQ (Frantar et al., 2022) with the seed system's parameter names.

    Per-layer overrides: ``module_wbits`` (exact layer name) beats ``mlp_wbits``
    (names containing "mlp") beats ``wbits``; ``mlp_groupsize`` likewise for
    the group size. ``mse`` turns on the clipping search: with
    ``clip_candidates`` > 0 each row's range factor is chosen by the output
    error GPTQ leaves; with 0, per group over ``q_grid`` shrink steps by the
    rounding error (exponent ``q_norm``) weighted by the Hessian diagonal.
    """

    method: ClassVar[str] = "gptq"
    result_type: ClassVar[type[QuantizationResult]] = GPTQResult

    wbits: int = 4
    groupsize: int = -1
    sym: bool = True
    actorder: bool = False
    mse: bool = False
    percdamp: float = 0.01
    blocksize: int = 128
    q_grid: int = 100
    q_norm: float = 2.4
    #: with mse: besides the per-group proxy search, this many row range factors
    #: (1 down to 0.6) are tried by running GPTQ on stacked copies of the rows; each
    #: row keeps the candidate with the smallest output error (costs 1 + this many
    #: GPTQ runs); 0: only the proxy search (q_grid steps, error exponent q_norm)
    clip_candidates: int = 5
    mlp_wbits: int | None = None
    mlp_groupsize: int | None = None
    module_wbits: dict[str, int] = field(default_factory=dict)
    static_groups: bool = False
    checkpoint_format: str = "gptq"
    true_sequential: bool = True

    def param_problems(self) -> list[str]:
        problems = super().param_problems()
        checks = [
            _bits_problem("wbits", self.wbits),
            _groupsize_problem("groupsize", self.groupsize),
            None if self.mlp_wbits is None else _bits_problem("mlp_wbits", self.mlp_wbits),
            None
            if self.mlp_groupsize is None
            else _groupsize_problem("mlp_groupsize", self.mlp_groupsize),
        ]
        problems += [p for p in checks if p]
        for name in ("sym", "actorder", "mse", "static_groups", "true_sequential"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r}: expected true or false")
        pd = self.percdamp
        if not isinstance(pd, (int, float)) or isinstance(pd, bool) or not 0 < pd < 10:
            problems.append(f"percdamp={pd!r}: expected a number > 0 (typically 0.01)")
        if not _is_int(self.blocksize) or self.blocksize < 1:
            problems.append(f"blocksize={self.blocksize!r}: expected an integer >= 1")
        if not _is_int(self.clip_candidates) or self.clip_candidates < 0:
            problems.append(f"clip_candidates={self.clip_candidates!r}: expected an integer >= 0")
        if not _is_int(self.q_grid) or self.q_grid < 1:
            problems.append(f"q_grid={self.q_grid!r}: expected an integer >= 1")
        qn = self.q_norm
        if not isinstance(qn, (int, float)) or isinstance(qn, bool) or qn <= 0:
            problems.append(f"q_norm={qn!r}: expected a number > 0")
        if not isinstance(self.module_wbits, dict):
            problems.append(f"module_wbits={self.module_wbits!r}: expected a mapping name -> bits")
        else:
            for name, bits in self.module_wbits.items():
                problem = _bits_problem(f"module_wbits[{name!r}]", bits)
                if problem:
                    problems.append(problem)
        if self.checkpoint_format not in ZERO_OFFSETS:
            problems.append(
                f"checkpoint_format={self.checkpoint_format!r}: expected one of "
                f"{', '.join(sorted(ZERO_OFFSETS))}"
            )
        return problems

    # -- per-layer settings ----------------------------------------------------------
    def layer_bits(self, name: str | None) -> int:
        if name is not None and name in self.module_wbits:
            return self.module_wbits[name]
        if name is not None and "mlp" in name and self.mlp_wbits is not None:
            return self.mlp_wbits
        return self.wbits

    def layer_groupsize(self, name: str | None) -> int:
        if name is not None and "mlp" in name and self.mlp_groupsize is not None:
            return self.mlp_groupsize
        return self.groupsize

    def grid_spec(self, bits: int) -> GridSpec:
        # legacy v1 loaders add 1 to the stored zero without masking: keep zeros >= 1 there
        min_zero = 1 if (self.checkpoint_format == "gptq" and not self.sym) else 0
        return GridSpec(
            bits=bits,
            sym=self.sym,
            clip_grid=self.q_grid if self.mse else 0,
            norm=float(self.q_norm),
            min_zero=min_zero,
        )

    def row_shrinks(self) -> list[float]:
        if not self.mse or self.clip_candidates <= 0:
            return []
        count = self.clip_candidates
        factors = [1.0 - 0.4 * k / (count - 1) for k in range(count)] if count > 1 else [1.0]
        return [0.0, *factors]  # 0: the proxy search

    # -- the three hooks ---------------------------------------------------------------
    def quantize_layer(
        self,
        module: nn.Module,
        input: torch.Tensor | None = None,
        hessian: torch.Tensor | None = None,
    ) -> GPTQResult:
        if hessian is None or hessian.dim() != 2:
            raise ValueError("GPTQ needs the full Hessian H = (2/N)·XᵀX of the layer's inputs")
        name = self.module_to_name.get(module)
        bits, groupsize = self.layer_bits(name), self.layer_groupsize(name)
        weight = module.weight.data
        out: GPTQOutput = gptq_quantize(
            weight,
            hessian.to(weight.device),
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

    def get_quant_config(self) -> dict[str, Any]:
        """GPTQ-ecosystem keys first (bits, group_size, desc_act, sym, checkpoint_format)."""
        return {
            "bits": self.wbits,
            "group_size": self.groupsize,
            "desc_act": self.actorder,
            "sym": self.sym,
            "checkpoint_format": self.checkpoint_format,
            "static_groups": self.static_groups,
            "true_sequential": self.true_sequential,
            "damp_percent": self.percdamp,
            "mse": self.mse,
            "q_grid": self.q_grid,
            "q_norm": self.q_norm,
            "clip_candidates": self.clip_candidates,
            "blocksize": self.blocksize,
            "mlp_wbits": self.mlp_wbits,
            "mlp_groupsize": self.mlp_groupsize,
            "module_wbits": dict(self.module_wbits),
        }

    @classmethod
    def from_quant_config(cls, config: dict[str, Any]) -> GPTQ:
        renamed = {"bits": "wbits", "group_size": "groupsize", "desc_act": "actorder"}
        renamed["damp_percent"] = "percdamp"
        return super().from_quant_config({renamed.get(k, k): v for k, v in config.items()})

    def create_inference_layer(
        self, result: GPTQResult, linear_module: nn.Module, **kwargs: Any
    ) -> GPTQLinear:
        return GPTQLinear.pack(
            result.codes,
            result.scales,
            result.zeros,
            result.g_idx,
            result.bits,
            getattr(linear_module, "bias", None),
            result.checkpoint_format,
        )

    @classmethod
    def build_inference_layer(cls, row: dict[str, Any]) -> GPTQLinear:
        return GPTQLinear.empty(
            row["in_features"],
            row["out_features"],
            row["bits"],
            row["groupsize"],
            bool(row.get("bias", False)),
            row.get("checkpoint_format", "gptq"),
        )
