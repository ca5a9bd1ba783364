"""The contract every quantization method implements.

A method is a dataclass subclass of :class:`Quantizer` that sets ``method``
(the registry name) and implements three hooks:

* :meth:`Quantizer.quantize_layer` — the algorithm for one layer;
* :meth:`Quantizer.get_quant_config` — its JSON config for ``config.json``;
* :meth:`Quantizer.create_inference_layer` — the compressed ``nn.Module``.

plus :meth:`Quantizer.build_inference_layer`, which makes an empty inference
layer from a saved per-layer row so a checkpoint loads without re-quantizing.
Everything else (layer selection, statistics, timing, error reporting,
storage of results) is shared and lives here or in the Runner.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from . import quant_error
from .result import QuantizationResult
from .selection import SelectionRules, select_layers

if TYPE_CHECKING:
    from .blockwise import BlockContext

logger = logging.getLogger(__name__)

#: the statistics a quantizer may ask the Runner for
STATISTICS = ("none", "diag", "full")


@dataclass
class Quantizer(ABC):
    """Base class of all quantization methods (see module docstring)."""

    method: ClassVar[str] = ""
    result_type: ClassVar[type[QuantizationResult]] = QuantizationResult

    name: str | None = None
    num_layers: int | None = None
    calc_quant_error: bool = False
    include_layer_names: list[str] = field(default_factory=list)
    exclude_layer_names: list[str] = field(default_factory=lambda: ["lm_head"])
    include_layer_keywords: list[str] = field(default_factory=list)
    exclude_layer_keywords: list[str] = field(default_factory=list)
    target_layer_types: tuple[type, ...] = (nn.Linear,)
    hessian_dtype: torch.dtype = torch.float32
    module_to_name: dict[nn.Module, str] = field(default_factory=dict, repr=False, compare=False)
    results: dict[str, QuantizationResult] = field(default_factory=dict, repr=False, compare=False)
    #: needs calibration activations at all
    flag_calibration: bool = True
    #: needs the full Hessian H = (2/N)·XᵀX of each layer's inputs
    flag_hessian: bool = True
    #: needs only the diagonal of XᵀX (input second moments); cheaper than the full H
    flag_xtx: bool = False
    #: quantize a block's layers in sub-groups (qkv → o → gate/up → down), each
    #: seeing inputs produced by the already-quantized earlier sub-groups
    true_sequential: bool = False

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = type(self).__name__

    # -- validation and selection ------------------------------------------------
    def param_problems(self) -> list[str]:
        """Subclasses extend this list; :meth:`validate_params` reports them all at once."""
        return self.selection_rules().problems()

    def validate_params(self) -> None:
        problems = self.param_problems()
        if problems:
            lines = "\n  - ".join(problems)
            raise ValueError(f"invalid parameters for {type(self).__name__}:\n  - {lines}")

    def selection_rules(self) -> SelectionRules:
        return SelectionRules(
            target_layer_types=tuple(self.target_layer_types),
            # passed as given (not list()-ed) so a bare string is reported, not split into letters
            include_layer_names=self.include_layer_names,
            include_layer_keywords=self.include_layer_keywords,
            exclude_layer_names=self.exclude_layer_names,
            exclude_layer_keywords=self.exclude_layer_keywords,
            num_layers=self.num_layers,
        )

    def setup(self, model: nn.Module) -> dict[str, nn.Module]:
        """Validate the parameters and pick the layers to quantize (name → module)."""
        self.validate_params()
        selected = select_layers(model, self.selection_rules())
        self.module_to_name = {m: n for n, m in selected.items()}
        return selected

    @property
    def statistics(self) -> str:
        """Which input statistics the Runner collects: "none", "diag" or "full"."""
        if not self.flag_calibration:
            return "none"
        if self.flag_hessian:
            return "full"
        return "diag" if self.flag_xtx else "none"

    # -- the three hooks -----------------------------------------------------------
    @abstractmethod
    def quantize_layer(
        self,
        module: nn.Module,
        input: torch.Tensor | None = None,
        hessian: torch.Tensor | None = None,
    ) -> QuantizationResult:
        """Quantize one layer.

        ``hessian`` is H = (2/N)·XᵀX (in × in) when :attr:`statistics` is
        "full", its diagonal (in,) when "diag", and None when "none".
        """

    @abstractmethod
    def get_quant_config(self) -> dict[str, Any]:
        """JSON-serializable method config, saved under ``quantization_config``."""

    @abstractmethod
    def create_inference_layer(
        self, result: QuantizationResult, linear_module: nn.Module, **kwargs: Any
    ) -> nn.Module:
        """The compressed module that replaces ``linear_module`` at inference."""

    @classmethod
    def build_inference_layer(cls, row: dict[str, Any]) -> nn.Module:
        """An inference layer with the right shapes (values to be loaded) from a saved row.

        ``row`` holds ``in_features``, ``out_features``, ``bias`` and what the
        result's :meth:`~QuantizationResult.layer_config` returned.
        """
        raise NotImplementedError(f"{cls.__name__} cannot rebuild its inference layers")

    @classmethod
    def from_quant_config(cls, config: dict[str, Any]) -> Quantizer:
        """Rebuild a quantizer from :meth:`get_quant_config` output (unknown keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in config.items() if k in known})

    # -- whole-model hook -------------------------------------------------------------
    def prepare(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Called once after layer selection and calibration, before the first block.

        ``batches`` are the calibration (input_ids, attention_mask) pairs (empty
        when the quantizer needs no calibration). Methods that plan over the
        whole model (AutoBit's bit allocation) do it here.
        """
        return None

    # -- whole-model hook after the last layer ---------------------------------------
    def on_model_quantized(
        self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Called once after every selected layer is quantized, before ``Runner.run`` returns.

        ``model`` is the fake-quantized model (dequantized weights written in,
        back on the CPU) and ``batches`` the calibration batches as in
        :meth:`prepare`. Whole-model fine-tuning (e.g. distillation against
        what :meth:`prepare` recorded from the full-precision model) goes here;
        a hook that changes weights must also update ``results``.
        """
        return None

    # -- per-block hook ------------------------------------------------------------
    #: ask the Runner to also keep the full-precision stream of each block
    wants_fp_stream: ClassVar[bool] = False

    def on_block_quantized(self, context: BlockContext) -> None:
        """Called after a block's layers are quantized, before its outputs feed the next block."""
        return None

    # -- shared machinery ------------------------------------------------------------
    def quantize(
        self,
        module: nn.Module,
        name: str,
        hessian: torch.Tensor | None = None,
        input: torch.Tensor | None = None,
    ) -> QuantizationResult:
        """Run :meth:`quantize_layer` with timing and optional error statistics, and record it."""
        start = time.perf_counter()
        result = self.quantize_layer(module, input=input, hessian=hessian)
        result.quantization_time = time.perf_counter() - start
        if self.calc_quant_error:
            self._fill_errors(module, result, hessian)
        result._method = getattr(result, "_method", None) or self.method
        self.results[name] = result
        return result

    def quantize_with_qep(
        self,
        module: nn.Module,
        quant_input_activation: torch.Tensor,
        original_input_activation: torch.Tensor | None = None,
        percdamp: float = 0.01,
        perccorr: float = 0.5,
        hessian: torch.Tensor | None = None,
        delta_hatX: torch.Tensor | None = None,
    ) -> QuantizationResult:
        """Seed API: QEP on one layer from its activations (the Runner streams this instead).

        ``quant_input_activation`` is X̂ (tokens × in) and
        ``original_input_activation`` X; ``hessian`` and ``delta_hatX`` may be
        given precomputed as H = (2/N)·X̂ᵀX̂ and C = (2/N)·(X − X̂)ᵀX̂.
        """
        from .qep import correct_weight

        x_q = quant_input_activation.reshape(-1, quant_input_activation.shape[-1]).double()
        scale = 2.0 / x_q.shape[0]
        if hessian is None:
            hessian = (scale * x_q.t() @ x_q).float()
        if delta_hatX is None and original_input_activation is not None:
            x = original_input_activation.reshape(x_q.shape).double()
            delta_hatX = (scale * (x - x_q).t() @ x_q).float()
        if delta_hatX is not None and perccorr > 0:
            module.weight.data = correct_weight(
                module.weight.data, hessian, delta_hatX, perccorr, percdamp
            )
        stats = hessian.diagonal().clone() if self.statistics == "diag" else hessian
        return self.quantize_layer(module, hessian=None if self.statistics == "none" else stats)

    def _fill_errors(
        self, module: nn.Module, result: QuantizationResult, hessian: torch.Tensor | None
    ) -> None:
        weight = module.weight.data
        deq = result.compute_dequantized_weight(weight.device)
        stats = quant_error.weight_errors(weight, deq)
        if hessian is not None:
            stats.update(quant_error.output_errors(weight, deq, hessian))
        for key, value in stats.items():
            setattr(result, key, value)

    def apply_results_to_model(self, model: nn.Module) -> None:
        """Write every result's dequantized weight into the model (a "fake-quantized" model)."""
        modules = dict(model.named_modules())
        for name, result in self.results.items():
            weight = modules[name].weight
            weight.data = result.compute_dequantized_weight(weight.device).to(weight.dtype)

    def save_results(self, path: str | Path) -> None:
        from .results_io import save_results

        save_results(self.results, path)

    def load_results(self, path: str | Path) -> None:
        from .results_io import load_results

        self.results = load_results(path)

    def config_for_storage(self) -> dict[str, Any]:
        """The saved quantizer config plus the method name."""
        return {"quant_method": self.method, **self.get_quant_config()}
