"""The behaviour of a quantization method: the hooks the engine calls, and when.

A method is a dataclass subclass of :class:`Method` whose fields are its
parameters (made with :func:`~onecomp_core.contract.param`), so the same
object is the config (validated, saved and loaded generically) and the
behaviour. The engine calls, in this order:

1. ``needs()`` — before anything runs, to know what to collect for planning,
   and again after ``prepare`` for what the block walk collects;
2. ``choose_layers(layers)`` — once, after layer selection: may drop layers;
3. ``prepare(view)`` — once, before the first block, with the
   full-precision model and the calibration batches (whole-model planning);
4. ``quantize_layer(job)`` — for every selected layer, block by block;
5. ``on_block_done(view)`` — after a block's layers, before its outputs feed
   the next block (block-wise fine-tuning); returns the results it changed;
6. ``on_model_done(view)`` — once after the last layer, on the quantized
   model (model-level distillation); returns the results it changed;

and, when ``needs().finetune`` is set, ``trainable_layer(result, linear)``
after step 4 of each block: the differentiable twin the engine fine-tunes
(block fine-tuning, :mod:`onecomp_core.contract.finetune`).

To save and load, ``inference_layer(result, linear)`` (the compressed
module) and ``empty_layer(row)`` (the same module with empty tensors, from
the saved per-layer row, so a checkpoint loads without re-quantizing).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .config import Config, param
from .finetune import TrainableLayer
from .needs import Needs
from .result import LayerResult
from .selection import SelectionRules, pattern_problems, select_layers
from .views import BlockView, LayerJob, RunView

#: the selection fields that hold names or keywords (``re:`` entries are expressions)
PATTERN_LISTS = (
    "include_layer_names",
    "include_layer_keywords",
    "exclude_layer_names",
    "exclude_layer_keywords",
)


@dataclass
class Method(Config):
    """Base class of every quantization method (see the module docstring for the hooks)."""

    #: the registry name users select (``--method NAME``)
    method: ClassVar[str] = ""
    result_type: ClassVar[type[LayerResult]] = LayerResult
    #: the parameter holding the headline bit width (what ``--bits`` sets); None: none
    bits_param: ClassVar[str | None] = None
    #: the method registry (``onecomp_core.registry`` installs itself here when imported),
    #: so plugins find each other by name without importing the core beyond the contract
    registry: ClassVar[Any] = None

    # -- layer selection (seed names; run settings, not saved with the method) -------------
    name: str | None = param(None, str, optional=True, internal=True)
    num_layers: int | None = param(None, int, ge=1, optional=True, saved=False)
    calc_quant_error: bool = param(False, saved=False)
    include_layer_names: list = param(items=str, factory=list, saved=False)
    exclude_layer_names: list = param(items=str, factory=lambda: ["lm_head"], saved=False)
    include_layer_keywords: list = param(items=str, factory=list, saved=False)
    exclude_layer_keywords: list = param(items=str, factory=list, saved=False)
    target_layer_types: tuple = param((nn.Linear,), internal=True)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = type(self).__name__

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("quantize_layer")
        if own is not None and not getattr(own, "_accepts_seed_call", False):
            cls.quantize_layer = _accept_seed_call(own)

    # -- other methods, by name ---------------------------------------------------------------
    @staticmethod
    def named(name: str) -> type[Method]:
        """The registered method class called ``name``; LookupError when none is installed."""
        return Method._registry().get_method(name)

    @staticmethod
    def create(name: str, /, **params: Any) -> Method:
        """A registered method from user parameters, validated (how routers build candidates)."""
        return Method._registry().create_method(name, **params)

    @staticmethod
    def _registry() -> Any:
        if Method.registry is None:
            raise RuntimeError("onecomp's method registry is not loaded (import onecomp_core)")
        return Method.registry

    # -- which layers -----------------------------------------------------------------------
    def selection_rules(self) -> SelectionRules:
        """The layer-selection rules the seed-named fields describe."""
        return SelectionRules(
            target_layer_types=tuple(self.target_layer_types),
            # as given (not list()-ed), so a bare string is reported, not split into letters
            include_layer_names=self.include_layer_names,
            include_layer_keywords=self.include_layer_keywords,
            exclude_layer_names=self.exclude_layer_names,
            exclude_layer_keywords=self.exclude_layer_keywords,
            num_layers=self.num_layers,
        )

    def problems(self) -> list[str]:
        """The parameters' problems, and selection patterns that are no valid expression."""
        found = super().problems()
        specs = Method.parameters()
        for label in PATTERN_LISTS:
            value = getattr(self, label)
            if specs[label].problem(label, value) is None:  # else reported as no list of strings
                found += pattern_problems(label, value)
        return found

    def select(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """Which of ``layers`` this method's selection fields pick (possibly none; no errors)."""
        return select_layers(layers, self.selection_rules(), strict=False)

    @staticmethod
    def per_layer(name: str, default: Any, mlp: Any = None, by_name: dict | None = None) -> Any:
        """A per-layer setting: an exact name in ``by_name`` > "mlp" in the name → ``mlp`` >
        ``default`` (the seed's rule for ``module_wbits`` / ``mlp_wbits`` and the like)."""
        if by_name and name in by_name:
            return by_name[name]
        return mlp if mlp is not None and "mlp" in name else default

    # -- what the method asks of the engine ---------------------------------------------
    def needs(self) -> Needs:
        """The statistics and engine features this method needs (default: none)."""
        return Needs()

    # -- bits -------------------------------------------------------------------------------
    @property
    def nominal_bits(self) -> float:
        """The headline bit width: the value of the ``bits_param`` parameter."""
        value = getattr(self, self.bits_param) if self.bits_param else None
        if value is None:
            raise NotImplementedError(f"method {self.method!r} declares no bit width")
        return float(value)

    def with_bits(self, bits: float) -> Method:
        """A validated copy at ``bits`` (what ``--bits B`` means): sets ``bits_param``."""
        if self.bits_param is None:
            raise NotImplementedError(f"method {self.method!r} has no bit-width parameter")
        whole = type(self).parameters()[self.bits_param].kind is int and float(bits).is_integer()
        return self.replace(**{self.bits_param: int(bits) if whole else bits})

    def bits_for(self, shape: tuple[int, int], name: str = "") -> float:
        """Effective bits per weight this method would store for an (out, in) layer ``name``."""
        raise NotImplementedError(f"method {self.method!r} does not predict its bits")

    # -- the per-layer hooks ------------------------------------------------------------------
    def quantize_layer(self, job: LayerJob) -> LayerResult:
        """Quantize one layer. Seed callers may pass ``(module, input, hessian)`` instead."""
        raise NotImplementedError

    def inference_layer(self, result: LayerResult, linear: nn.Module) -> nn.Module:
        """The compressed module that replaces ``linear`` at inference."""
        raise NotImplementedError(f"method {self.method!r} has no inference layer")

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        """An inference layer with the right shapes from a saved row (values loaded after)."""
        raise NotImplementedError(f"{cls.__name__} cannot rebuild its inference layers")

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableLayer | None:
        """A differentiable twin of ``result`` for block fine-tuning (None: nothing to train).

        ``linear`` is the layer (its bias, device, dtype) with the result's
        dequantized weight written in. Called only when ``needs().finetune``
        is active, after the block's layers are quantized.
        """
        return None

    # -- one layer's solve split over processes (torch.distributed; default: not split) --------
    def row_block(self, job: LayerJob) -> int:
        """Rows of ``job``'s weight that may be solved apart; 0 (the default): the layer is one solve.

        ``k > 0`` promises that ``quantize_layer`` on consecutive row slices that start at
        multiples of ``k`` (each job's module holding its slice of the weight, with the same
        ``hessian`` and its slice of ``gradients``), joined by :meth:`join_rows`, gives exactly
        the whole layer's result. A distributed run then gives every process a share of the
        rows of every layer instead of whole layers, and the processes build the slices'
        shared structures together (the kernels' inverse-Hessian factor, see
        :mod:`onecomp_core.kernels.team`): every slice's solve must make the same kernel
        calls on ``hessian`` as the others.
        """
        return 0

    def join_rows(self, parts: list[LayerResult]) -> LayerResult | None:
        """The whole layer's result from its row slices' results, in row order (only called when
        :meth:`row_block` is positive). None when they cannot be joined (one slice fell back to
        another solve): the engine then solves the whole layer."""
        raise NotImplementedError(f"method {self.method!r} splits rows but cannot join them")

    # -- lifecycle hooks (default: nothing) ---------------------------------------------------
    def choose_layers(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """After selection, before calibration: the layers this method will quantize."""
        return layers

    def prepare(self, view: RunView) -> None:
        """Once before the first block, on the full-precision model (whole-model planning)."""

    def on_block_done(self, view: BlockView) -> dict[str, LayerResult]:
        """After a block's layers are quantized: return the results it changed (fine-tuning)."""
        return {}

    def on_model_done(self, view: RunView) -> dict[str, LayerResult]:
        """After the last layer, on the quantized model: return the results it changed."""
        return {}

    # -- the one way the engine (and routers) run a layer ---------------------------------------
    def quantize(self, job: LayerJob) -> LayerResult:
        """:meth:`quantize_layer`, timed, with ``result.method`` filled in."""
        start = time.perf_counter()
        result = self.quantize_layer(job)
        result.quantization_time = time.perf_counter() - start
        if not result.method:
            result.method = self.method
        return result

    def replace(self, **changes: Any) -> Method:
        """A validated copy with some parameters changed."""
        copy = dataclasses.replace(self, **changes)
        copy.validate()
        return copy


def _accept_seed_call(fn):
    """Let ``quantize_layer(module, input=None, hessian=None)`` (the seed API) build the job."""

    @functools.wraps(fn)
    def quantize_layer(self, job=None, input=None, hessian=None, **kwargs):
        if not isinstance(job, LayerJob):
            module = job if job is not None else kwargs.pop("module")
            job = LayerJob(name=kwargs.pop("name", ""), module=module, hessian=hessian, input=input)
        return fn(self, job, **kwargs)

    quantize_layer._accepts_seed_call = True
    return quantize_layer


__all__ = ["Method"]
