"""AutoBitQuantizer: routes each layer to the candidate method the plan chose for it.

The engine drives it like any method (see :mod:`onecomp_core.contract.method`):

1. ``choose_layers(layers)``: the candidates are built; the manual strategy
   drops the layers no candidate selects, and targets at or below
   ``dbf_threshold`` fall back to DBF, both without data;
2. ``needs()``: before planning, the planning moments and what any candidate
   may need; after planning, what the chosen candidates need;
3. ``prepare(view)``: scores every candidate on every layer with
   ``view.moments`` and solves the integer program, then each chosen
   candidate prepares over its own layers;
4. ``quantize_layer(job)``: the layer's candidate quantizes it with the
   statistics it asks for (its results name their own method);
5. ``trainable_layer`` (engine block fine-tuning): the layer's candidate's twin;
   ``on_block_done`` / ``on_model_done``: forwarded to each chosen candidate
   with the view restricted to its layers; the report is written last.

AutoBit keeps its plan (its own state) and never changes shared state: the
results the candidates return go back to the engine. A saved model mixing
GPTQ and DBF layers loads without AutoBit: each saved row names its method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from onecomp_core.contract import (
    BlockView,
    GradientMoments,
    LayerJob,
    LayerResult,
    Method,
    Needs,
    RunView,
    TrainableLayer,
)

from . import planner, report
from .candidates import build_candidates, combined_needs, default_specs, shaped_statistics
from .config import AutoBitConfig
from .plan import Plan

V = TypeVar("V", BlockView, RunView)


@dataclass
class AutoBitQuantizer(AutoBitConfig):
    """Mixed precision: one candidate method per layer under a bit budget (package README)."""

    #: the plan (None until ``choose_layers``); AutoBit's own state, not a parameter
    plan: Plan | None = field(default=None, init=False, repr=False, compare=False)
    #: layer module id → its name (from ``choose_layers``): ``trainable_layer`` gets the module
    _names: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    #: whether planning keeps the full Kronecker factors (decided in ``choose_layers``)
    full_planning: bool = field(default=False, init=False, repr=False, compare=False)
    #: set to a dict before the run to receive every scored candidate's dequantized weight
    #: under (layer name, column index) (``benchmarks/autobit_validation.py`` reads it)
    scored_weights: dict | None = field(default=None, init=False, repr=False, compare=False)

    # -- before calibration -------------------------------------------------------------------
    def choose_layers(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        self.plan, kept = planner.choose(self, layers)
        self._names = {id(module): name for name, module in kept.items()}
        self.full_planning = planner.full_planning(self, kept)
        return kept

    def needs(self) -> Needs:
        if self.plan is not None and self.plan.planned:
            return combined_needs([method for method, _ in self.plan.children()])
        if self.plan is not None:
            candidates = self.plan.candidates
        else:  # asked before choose_layers: the given candidates (the default's group size
            candidates = build_candidates(self.quantizers or default_specs([])[0])  # is moot)
        own = None
        if self.assignment_strategy == "activation_aware":
            own = Needs(moments=self.planning_moments())
        return combined_needs(candidates, own)

    def planning_moments(self) -> GradientMoments:
        """The output-gradient moments activation-aware planning reads in ``prepare``."""
        return GradientMoments(
            labels=self.fisher_labels,
            samples=self.fisher_samples,
            full=self.full_planning,
            max_sequences=self.num_calib_samples,
            max_tokens=self.calib_seqlen,
            gradients=self.use_curvature_b,
            scope=self.fisher_scope,
        )

    # -- planning ----------------------------------------------------------------------------------
    def prepare(self, view: RunView) -> None:
        """Plan (unless decided without data), then let every chosen candidate prepare."""
        if self.plan is None:
            self.choose_layers(view.layers)
        if not self.plan.planned:
            layers = {n: view.layers[n] for n in self.plan.shapes}
            planner.solve(self, self.plan, layers, view.moments, view.walk, self.scored_weights)
        for method, names in self.plan.children():
            method.prepare(_restricted(view, names))

    # -- routing -----------------------------------------------------------------------------------
    def quantize_layer(self, job: LayerJob) -> LayerResult:
        child = self._plan().child(job.name)
        return child.quantize(job.with_hessian(shaped_statistics(child, job.hessian)))

    def trainable_layer(self, result: LayerResult, linear: nn.Module) -> TrainableLayer | None:
        name = self._names.get(id(linear))
        if name is None or self.plan is None or name not in self.plan.choice:
            return None
        return self.plan.child(name).trainable_layer(result, linear)

    def on_block_done(self, view: BlockView) -> dict[str, LayerResult]:
        changed: dict[str, LayerResult] = {}
        for method, names in self._plan().children():
            sub = _restricted(view, names)
            if sub.layers:
                changed.update(method.on_block_done(sub))
        return changed

    def on_model_done(self, view: RunView) -> dict[str, LayerResult]:
        """Each chosen candidate's whole-model step over its own layers; then the report."""
        changed: dict[str, LayerResult] = {}
        for method, names in self._plan().children():
            changed.update(method.on_model_done(_restricted(view, names)))
        if self.save_path is not None:
            facts = report.summary(self.plan, self.target_bit, {**view.results, **changed})
            report.save_outputs(self.save_path, facts, self.assignment_strategy)
        return changed

    def _plan(self) -> Plan:
        if self.plan is None or not self.plan.planned:
            raise RuntimeError("AutoBit has not planned yet: choose_layers() and prepare() first")
        return self.plan

    # -- loading: each layer is its own method's ---------------------------------------------------
    def inference_layer(self, result: LayerResult, linear: nn.Module) -> nn.Module:
        return _method_of(result.method)().inference_layer(result, linear)

    @classmethod
    def empty_layer(cls, row: dict[str, Any]) -> nn.Module:
        return _method_of(row.get("method")).empty_layer(row)

    # -- saved form: the parameters plus the plan (the seed's keys) --------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.plan is not None:
            return {**data, **self.plan.saved()}
        given = build_candidates(self.quantizers) if self.quantizers else []
        return {**data, **Plan(given, {}).saved()}  # before the run: the given candidates


def _method_of(name: str | None) -> type[Method]:
    if name in (None, "", AutoBitQuantizer.method):
        raise ValueError("an AutoBit layer must name the candidate method that made it")
    return Method.named(name)


def _restricted(view: V, names: list[str]) -> V:
    """``view`` (a block's or the run's) with only ``names``' layers, results and moments."""
    changes: dict[str, Any] = {
        "layers": {n: view.layers[n] for n in names if n in view.layers},
        "results": {n: view.results[n] for n in names if n in view.results},
    }
    if getattr(view, "moments", None) is not None:
        changes["moments"] = {n: view.moments[n] for n in names if n in view.moments}
    return dataclasses.replace(view, **changes)
