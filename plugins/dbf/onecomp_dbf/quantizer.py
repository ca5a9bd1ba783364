"""The DBF quantizer (config + the three hooks) and its per-layer result."""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from onecomp_core.quantizer import Quantizer
from onecomp_core.result import QuantizationResult

from .distill import TeacherRecorder, distill_model
from .factorization import (
    FitSettings,
    activation_scales,
    binary_bits,
    compose,
    factorize,
    input_correlation,
    middle_dim,
    refit_vectors_hessian,
    total_bits,
)
from .layer import DoubleBinaryLinear
from .packing import pack_signs, unpack_signs

if TYPE_CHECKING:
    from onecomp_core.blockwise import BlockContext

logger = logging.getLogger(__name__)

#: distillation steps when fine-tuning is on (2 bits, stories260K: 200 → ts 20.0, 400 → 18.5, 600 → 18.4)
DEFAULT_DISTILL_STEPS = 400
WEIGHTINGS = ("activation", "activation_gradient", "none")
BALANCE_MODES = ("l1", "l2")


@dataclass
class DBFResult(QuantizationResult):
    """Packed factors of one layer: Ŵ = diag(dbf_Da)·A·diag(dbf_mid)·B·diag(dbf_Db).

    ``dbf_A`` (n × k) and ``dbf_B`` (k × m) are packed signs (uint8, see
    :mod:`onecomp_dbf.packing`); the vectors are fp16. When the fit failed
    (``is_dbf_quantized`` False) the factors are None and
    ``dequantized_weight`` holds the original dense weight.
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

    def compute_dequantized_weight(self, device=None) -> torch.Tensor:
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


@dataclass
class DBF(Quantizer):
    """Double Binary Factorization, activation-weighted, with block-wise scale fine-tuning.

    Defaults that differ from the seed (``iters``, ``use_balancing``,
    ``use_adaptive_rho``) are justified with measurements in the plugin README.
    """

    method: ClassVar[str] = "dbf"
    result_type: ClassVar[type[QuantizationResult]] = DBFResult

    target_bits: float = 1.5
    iters: int = 40
    reg: float = 0.03
    use_balancing: bool = False
    balance_iters: int = 40
    balance_alpha: float = 1.0
    balance_mode: str = "l1"
    use_adaptive_rho: bool = False
    mlp_target_bits: float | None = None
    module_target_bits: dict[str, float] | None = None
    weighting: str = "activation"
    clamp_k: bool = False
    seed: int = 0
    finetune_steps: int = 100
    finetune_lr: float = 1e-2
    #: Adam learning rate of the sign latents (straight-through); 0 keeps the signs fixed
    finetune_sign_lr: float = 0.02
    #: Adam steps of the final model-level distillation (KL to the full-precision logits);
    #: None = 400 when fine-tuning is on (``finetune_steps`` > 0), else 0; 0 = off
    distill_steps: int | None = None
    distill_lr: float = 1e-2
    #: sign learning rate of the distillation (straight-through); 0 keeps the signs fixed
    distill_sign_lr: float = 0.02
    #: fit the signs on the full-Hessian objective (needs flag_hessian), not only its diagonal
    hessian_admm: bool = True
    hessian_damp: float = 0.1
    #: the full H refits the vectors on the exact output error (diag alone: flag_hessian=False)
    flag_hessian: bool = True
    flag_xtx: bool = True
    #: layer name → (out,) mean squared output gradients, for weighting="activation_gradient"
    gradient_statistics: dict[str, torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    _teacher: TeacherRecorder | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting == "none":  # no input statistics needed (the stream still is)
            self.flag_hessian = self.flag_xtx = False

    @property
    def wants_fp_stream(self) -> bool:  # type: ignore[override]
        """The full-precision block outputs are needed only to fine-tune."""
        return isinstance(self.finetune_steps, int) and self.finetune_steps > 0

    # -- validation ------------------------------------------------------------------
    def param_problems(self) -> list[str]:
        problems = super().param_problems()

        def positive(name: str, value: Any, integer: bool = False, minimum: float = 0) -> None:
            kind = int if integer else (int, float)
            bad = isinstance(value, bool) or not isinstance(value, kind)
            if bad or not math.isfinite(value) or value < minimum or value == minimum == 0:
                what = "an integer" if integer else "a number"
                bound = f">= {minimum}" if minimum else "> 0"
                problems.append(f"{name}={value!r}: expected {what} {bound}")

        positive("target_bits", self.target_bits)
        positive("iters", self.iters, integer=True, minimum=1)
        if isinstance(self.reg, bool) or not isinstance(self.reg, (int, float)) or self.reg < 0:
            problems.append(f"reg={self.reg!r}: expected a number >= 0")
        if self.use_balancing:
            positive("balance_iters", self.balance_iters, integer=True, minimum=1)
            positive("balance_alpha", self.balance_alpha)
            if self.balance_mode not in BALANCE_MODES:
                problems.append(f"balance_mode={self.balance_mode!r}: expected one of l1, l2")
        for name in ("use_balancing", "use_adaptive_rho", "clamp_k", "hessian_admm"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r}: expected true or false")
        if self.mlp_target_bits is not None:
            _check_override("mlp_target_bits", self.mlp_target_bits, problems)
        if self.module_target_bits is not None:
            if not isinstance(self.module_target_bits, dict):
                problems.append(
                    f"module_target_bits={self.module_target_bits!r}: expected a dict "
                    "layer name → bits"
                )
            else:
                for key, value in self.module_target_bits.items():
                    if not isinstance(key, str):
                        problems.append(f"module_target_bits key {key!r}: expected a layer name")
                    _check_override(f"module_target_bits[{key!r}]", value, problems)
        if self.weighting not in WEIGHTINGS:
            problems.append(
                f"weighting={self.weighting!r}: expected one of {', '.join(WEIGHTINGS)}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"seed={self.seed!r}: expected an integer")
        steps = self.finetune_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            problems.append(f"finetune_steps={steps!r}: expected an integer >= 0 (0 = off)")
        positive("finetune_lr", self.finetune_lr)
        steps = self.distill_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 0
        ):
            problems.append(
                f"distill_steps={steps!r}: expected an integer >= 0 (0 = off) or null (auto)"
            )
        positive("distill_lr", self.distill_lr)
        for name in ("finetune_sign_lr", "distill_sign_lr"):
            sign_lr = getattr(self, name)
            bad = isinstance(sign_lr, bool) or not isinstance(sign_lr, (int, float))
            if bad or not sign_lr >= 0:
                problems.append(f"{name}={sign_lr!r}: expected a number >= 0 (0 = off)")
        damp = self.hessian_damp
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp <= 1:
            problems.append(f"hessian_damp={damp!r}: expected a number in [0, 1]")
        return problems

    def setup(self, model: nn.Module) -> dict[str, nn.Module]:
        selected = super().setup(model)
        if self.weighting == "activation_gradient":
            missing = [name for name in selected if name not in self.gradient_statistics]
            if missing:
                raise ValueError(
                    "weighting='activation_gradient' needs output-gradient statistics "
                    "(DBF.gradient_statistics: layer name → mean squared output gradient), "
                    f"which the Runner does not collect yet; missing for {missing[:3]}"
                    f"{' ...' if len(missing) > 3 else ''}. Use weighting='activation'."
                )
        return selected

    # -- per-layer bits ------------------------------------------------------------------
    @staticmethod
    def resolve_bits(
        name: str,
        default: float,
        mlp: float | None = None,
        module: dict[str, float] | None = None,
    ) -> float:
        """Bits of one layer: exact name in ``module`` > "mlp" in the name → ``mlp`` > default."""
        if module and name in module:
            return float(module[name])
        if mlp is not None and "mlp" in name:
            return float(mlp)
        return float(default)

    def layer_bits(self, name: str) -> float:
        return self.resolve_bits(
            name, self.target_bits, self.mlp_target_bits, self.module_target_bits
        )

    def fit_settings(self, name: str) -> FitSettings:
        """Settings for one layer; the seed is mixed with the layer name (stable across runs)."""
        layer_seed = (self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
        return FitSettings(
            iters=self.iters,
            reg=float(self.reg),
            use_balancing=self.use_balancing,
            balance_iters=self.balance_iters,
            balance_alpha=float(self.balance_alpha),
            balance_mode=self.balance_mode,
            use_adaptive_rho=self.use_adaptive_rho,
            seed=layer_seed,
        )

    # -- the three hooks -------------------------------------------------------------------
    def quantize_layer(
        self,
        module: nn.Module,
        input: torch.Tensor | None = None,
        hessian: torch.Tensor | None = None,
    ) -> DBFResult:
        weight = module.weight.data
        n, m = weight.shape
        name = self.module_to_name.get(module, "")
        bits = self.layer_bits(name)
        k = middle_dim(n, m, bits, self.clamp_k)
        meta = self._result_meta(n, m, k, bits, weight.dtype)
        col, row = self._weights(name, m, input, hessian)
        try:
            corr = None
            full = hessian is not None and hessian.dim() == 2 and self.weighting != "none"
            if full and self.hessian_admm:
                corr = input_correlation(hessian, col, self.hessian_damp)
            factors = factorize(
                weight, k, self.fit_settings(name), col_scale=col, row_scale=row, correlation=corr
            )
            if hessian is not None and hessian.dim() == 2 and self.weighting != "none":
                factors = refit_vectors_hessian(weight, hessian, factors)
            a, c, b = (v.to(torch.float16) for v in (factors.a, factors.c, factors.b))
            if not all(torch.isfinite(v).all() for v in (a, c, b)):
                raise FloatingPointError("non-finite scale vectors")
        except (FloatingPointError, RuntimeError) as exc:  # LinAlgError is a RuntimeError
            logger.warning("DBF failed on layer %r (%s); it stays dense", name or module, exc)
            return DBFResult(
                dequantized_weight=weight.detach().cpu().clone(),
                is_dbf_quantized=False,
                fallback=f"dense: {exc}",
                **meta,
            )
        return DBFResult(
            dbf_Da=a,
            dbf_A=pack_signs(factors.sign_a),
            dbf_mid=c,
            dbf_B=pack_signs(factors.sign_b),
            dbf_Db=b,
            **meta,
        )

    def _result_meta(self, n: int, m: int, k: int, bits: float, dtype: torch.dtype) -> dict:
        return dict(
            out_features=n,
            in_features=m,
            mid_features=k,
            dense_dtype=str(dtype).removeprefix("torch."),
            target_bits=bits,
            iters=self.iters,
            reg=float(self.reg),
            use_balancing=self.use_balancing,
            balance_iters=self.balance_iters,
            balance_alpha=float(self.balance_alpha),
            balance_mode=self.balance_mode,
            use_adaptive_rho=self.use_adaptive_rho,
            weighting=self.weighting,
            seed=self.seed,
        )

    def _weights(
        self, name: str, in_features: int, input: torch.Tensor | None, hessian: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(column scales s, row scales r) of the weighted objective."""
        if self.weighting == "none":
            return None, None
        if hessian is not None:
            diag = hessian.diagonal() if hessian.dim() == 2 else hessian
        elif input is not None:
            x = input.reshape(-1, input.shape[-1]).float()
            diag = 2 * x.pow(2).mean(0)
        else:
            logger.warning("DBF layer %r got no calibration statistics: unweighted fit", name)
            diag = None
        col = activation_scales(None if diag is None else diag.cpu(), in_features)
        row = None
        if self.weighting == "activation_gradient":
            if name not in self.gradient_statistics:
                raise ValueError(
                    f"weighting='activation_gradient': no output-gradient statistics for layer "
                    f"{name!r} (set DBF.gradient_statistics) — use weighting='activation'"
                )
            row = self.gradient_statistics[name].float().cpu().clamp_min(0).sqrt()
            row = row.clamp_min(1e-3 * row.mean().clamp_min(1e-12))
        return col, row

    def get_quant_config(self) -> dict[str, Any]:
        return {
            "target_bits": self.target_bits,
            "iters": self.iters,
            "reg": self.reg,
            "use_balancing": self.use_balancing,
            "balance_iters": self.balance_iters,
            "balance_alpha": self.balance_alpha,
            "balance_mode": self.balance_mode,
            "use_adaptive_rho": self.use_adaptive_rho,
            "mlp_target_bits": self.mlp_target_bits,
            "module_target_bits": self.module_target_bits,
            "weighting": self.weighting,
            "clamp_k": self.clamp_k,
            "seed": self.seed,
            "finetune_steps": self.finetune_steps,
            "finetune_lr": self.finetune_lr,
            "finetune_sign_lr": self.finetune_sign_lr,
            "hessian_admm": self.hessian_admm,
            "hessian_damp": self.hessian_damp,
            "distill_steps": self.distill_steps,
            "distill_lr": self.distill_lr,
            "distill_sign_lr": self.distill_sign_lr,
        }

    def create_inference_layer(
        self, result: DBFResult, linear_module: nn.Module, **kwargs: Any
    ) -> nn.Module:
        bias = getattr(linear_module, "bias", None)
        if not result.is_dbf_quantized:
            return dense_layer(result.dequantized_weight, bias, linear_module.weight.dtype)
        return DoubleBinaryLinear.from_parts(
            result.dbf_Da,
            result.dbf_A,
            result.dbf_mid,
            result.dbf_B,
            result.dbf_Db,
            bias=bias,
            cache_signs=kwargs.get("cache_signs", False),
        )

    @classmethod
    def build_inference_layer(cls, row: dict[str, Any]) -> nn.Module:
        has_bias = bool(row.get("bias", False))
        if not row.get("is_dbf_quantized", True):
            dtype = getattr(torch, row.get("dense_dtype", "float16"))
            return nn.Linear(row["in_features"], row["out_features"], bias=has_bias, dtype=dtype)
        return DoubleBinaryLinear(
            row["in_features"], row["out_features"], row["mid_features"], bias=has_bias
        )

    # -- whole-model hooks: record the teacher, distil at the end ------------------------------
    def resolved_distill_steps(self) -> int:
        """``distill_steps``, or its default: 400 with fine-tuning on, none without.

        ``finetune_steps=0`` is the layer-wise-only mode, so it switches the
        model-level distillation off too unless ``distill_steps`` is given.
        """
        if self.distill_steps is not None:
            return self.distill_steps
        steps = self.finetune_steps
        return DEFAULT_DISTILL_STEPS if isinstance(steps, int) and steps > 0 else 0

    def prepare(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Record the full-precision model's head inputs when distillation is on."""
        self._teacher = None
        if self.resolved_distill_steps() <= 0 or not batches:
            return
        teacher = TeacherRecorder()
        if teacher.record(model, batches):
            self._teacher = teacher
        else:
            logger.warning("DBF: the model has no output head to distil from; distillation off")

    def on_model_quantized(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Distil the vectors (and signs) of every DBF layer against the recorded teacher."""
        teacher, self._teacher = self._teacher, None
        if teacher is None or not batches:
            return
        layers = {name: module for module, name in self.module_to_name.items()}
        losses = distill_model(
            model,
            layers,
            self.results,
            batches,
            teacher,
            self.resolved_distill_steps(),
            self.distill_lr,
            self.distill_sign_lr,
            self.seed,
        )
        logger.info("DBF model distillation: %s", losses)

    # -- per-block hook -----------------------------------------------------------------------
    def on_block_quantized(self, context: BlockContext) -> None:
        if self.finetune_steps <= 0 or context.fp_outputs is None:
            return
        from .finetune import finetune_block

        finetune_block(
            context, self.finetune_steps, self.finetune_lr, self.seed, self.finetune_sign_lr
        )


def dense_layer(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Linear:
    """A plain Linear holding a layer DBF could not factorize."""
    n, m = weight.shape
    layer = nn.Linear(m, n, bias=bias is not None, dtype=dtype)
    layer.weight.data.copy_(weight)
    if bias is not None:
        layer.bias.data.copy_(bias.detach())
    return layer


def _check_override(name: str, value: Any, problems: list[str]) -> None:
    """Per-layer bit overrides are numbers >= 1.0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0:
        problems.append(f"{name}={value!r}: expected a number >= 1.0")
