"""AutoBit as the engine drives it, hook by hook, on a tiny model: plan, route, forward, report.

``drive`` plays the engine's part (choose_layers → needs → moments → prepare →
quantize each layer → on_block_done → on_model_done) with full-precision
statistics, so the router is checked without the block walk.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

from onecomp_autobit import AutoBitQuantizer
from onecomp_core.contract import BlockView, LayerJob, RunView
from onecomp_core.engine.gradients import collect_moments
from onecomp_core.registry import create_method, methods
from onecomp_core.rtn.method import RTN
from onecomp_core.testing import HessianRTNPlugin, registered_plugin, tiny_model


@pytest.fixture(scope="module")
def model_and_batches():
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 128, (4, 16), generator=gen)
    return model, [(ids[:2], None), (ids[2:], None)]


def linears(model) -> dict[str, torch.nn.Module]:
    return {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
    }


def drive(autobit: AutoBitQuantizer, model, batches) -> dict:
    """The engine's calls, in its order; returns the final results."""
    layers = autobit.choose_layers(linears(model))
    wanted = autobit.needs().moments
    moments = None
    if wanted is not None:
        moments = collect_moments(
            model, layers, batches, gradients=wanted.gradients, full=wanted.full,
            fisher_labels=wanted.labels, samples=wanted.samples, seed=wanted.seed,
        )  # fmt: skip
    autobit.prepare(RunView(model, layers, batches, moments=moments))
    inputs = collect_moments(model, layers, batches, gradients=False, full=True)
    results = {}
    for name, module in layers.items():
        kind = autobit.needs().inputs
        h = 2 * inputs[name].xtx.float()
        hessian = None if kind == "none" else h if kind == "full" else h.diagonal()
        results[name] = autobit.quantize(LayerJob(name, module, hessian))
    view = BlockView(0, "model.layers.0", model, torch.device("cpu"), [], [], layers, results)
    results.update(autobit.on_block_done(view))
    results.update(autobit.on_model_done(RunView(model, layers, batches, dict(results))))
    return results


def rtn_specs(bits=(2, 3, 4, 8)) -> list[dict]:
    return [{"method": "rtn", "wbits": b, "groupsize": 32} for b in bits]


def test_needs_follow_the_plan_and_each_layer_goes_to_its_candidate(model_and_batches):
    model, batches = model_and_batches
    with registered_plugin(HessianRTNPlugin()):
        specs = [*rtn_specs((2,)), {"method": "hessian_rtn", "wbits": 8}]
        cheap = create_method("rtn", wbits=2, groupsize=32)
        layers = linears(model)
        floor = sum(
            m.weight.numel() * cheap.bits_for((m.out_features, m.in_features))
            for m in layers.values()
        ) / sum(m.weight.numel() for m in layers.values())
        for target, chosen in ((floor, {"rtn"}), (16.0, {"hessian_rtn"})):
            autobit = create_method(
                "autobit", quantizers=specs, target_bit=target, target_bit_is_effective=True
            )
            autobit.choose_layers(layers)
            before = autobit.needs()  # every candidate's needs, and the planning moments
            assert (before.inputs, before.sequential) == ("full", True)
            assert before.moments.full and before.moments.labels == "model"
            results = drive(autobit, model, batches)
            assert {r.method for r in results.values()} == chosen
            after = autobit.needs()  # only what the chosen candidates need
            assert after.moments is None
            assert after.inputs == ("none" if chosen == {"rtn"} else "full")
            assert after.sequential == (chosen == {"hessian_rtn"})
            for name, result in results.items():
                assert result.method == autobit.plan.child(name).method


def test_a_ragged_group_size_offers_the_per_row_twin(model_and_batches):
    model, batches = model_and_batches
    autobit = create_method(
        "autobit", quantizers=rtn_specs((2,)), target_bit=2.0, dbf_threshold=1.0
    )
    results = drive(autobit, model, batches)
    plan = autobit.plan
    assert plan.columns == [(0, False), (0, True)]
    for name, result in results.items():
        ragged = "down_proj" in name  # 72 inputs, group size 32
        assert (name in plan.per_row) <= ragged
        assert result.groupsize == (-1 if name in plan.per_row else 32)
        assert plan.child(name).groupsize == result.groupsize
    assert plan.candidates[0].groupsize == 32  # the candidate itself is unchanged


@dataclass
class Recording(RTN):
    """RTN that records what its lifecycle hooks see, and changes one result at the end."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.calls = []

    def prepare(self, view):
        self.calls.append(("prepare", sorted(view.layers), len(view.results)))

    def on_block_done(self, view):
        self.calls.append(("block", sorted(view.layers), sorted(view.results)))
        return {}

    def on_model_done(self, view):
        self.calls.append(("model", sorted(view.layers), sorted(view.results)))
        name = sorted(view.results)[0]
        return {name: dataclasses.replace(view.results[name], fallback="touched")}


def test_lifecycle_hooks_reach_each_chosen_candidate_over_its_own_layers(model_and_batches):
    model, batches = model_and_batches
    recording = Recording(wbits=4, groupsize=32, include_layer_keywords=["mlp"])
    autobit = create_method(
        "autobit", quantizers=[recording, *rtn_specs((8,))], assignment_strategy="manual"
    )
    results = drive(autobit, model, batches)
    child = autobit.plan.candidates[0]
    assert child is not recording and recording.calls == []  # AutoBit works on copies
    mine = sorted(n for n in results if "mlp" in n)
    assert [c[0] for c in child.calls] == ["prepare", "block", "model"]
    assert child.calls[0] == ("prepare", mine, 0)
    assert child.calls[1] == ("block", mine, mine)
    assert child.calls[2] == ("model", mine, mine)
    assert results[mine[0]].fallback == "touched"
    assert {r.method for r in results.values()} == {"rtn"}


def test_manual_strategy_drops_unselected_layers_and_keeps_fused_groups(model_and_batches):
    model, _ = model_and_batches
    specs = [{**rtn_specs((4,))[0], "include_layer_keywords": ["self_attn"]}]
    autobit = create_method("autobit", quantizers=specs, assignment_strategy="manual")
    kept = autobit.choose_layers(linears(model))
    assert sorted(kept) == sorted(n for n in linears(model) if "self_attn" in n)
    split = [{**rtn_specs((4,))[0], "include_layer_keywords": ["q_proj"]}, *rtn_specs((2,))]
    autobit = create_method("autobit", quantizers=split, assignment_strategy="manual")
    with pytest.raises(ValueError, match="fused group split"):
        autobit.choose_layers(linears(model))


def test_report_is_written_when_the_run_is_done(model_and_batches, tmp_path):
    model, batches = model_and_batches
    png = tmp_path / "plan.png"
    autobit = create_method("autobit", quantizers=rtn_specs(), target_bit=3.0, save_path=str(png))
    layers = autobit.choose_layers(linears(model))
    autobit.prepare(RunView(model, layers, batches))  # no moments: plain weight error
    for name, module in layers.items():
        autobit.quantize(LayerJob(name, module))
    assert not png.with_suffix(".json").exists()  # not inside quantize
    results = drive(autobit, model, batches)
    table = json.loads(png.with_suffix(".json").read_text())
    assert len(table["layers"]) == len(results)
    assert table["measured_bits"] == pytest.approx(autobit.plan.achieved_bits)


def test_saved_config_keeps_the_seed_keys_and_rebuilds_the_candidates(model_and_batches):
    model, batches = model_and_batches
    autobit = create_method("autobit", quantizers=rtn_specs(), target_bit=3.0)
    drive(autobit, model, batches)
    saved = json.loads(json.dumps(autobit.to_dict()))
    for key in ("effective_target", "achieved_bits", "solver_status", "dbf_fallback"):
        assert key in saved
    assert "quantizers" not in saved and "save_path" not in saved
    assert [c["label"] for c in saved["candidates"]] == [
        "rtn-2b-g32", "rtn-3b-g32", "rtn-4b-g32", "rtn-8b-g32"
    ]  # fmt: skip
    assert set(saved["assignment"]) == set(linears(model))
    again = AutoBitQuantizer.from_dict(saved)
    assert [(q.method, q.wbits, q.groupsize) for q in again.quantizers] == [
        ("rtn", b, 32) for b in (2, 3, 4, 8)
    ]
    assert again.target_bit == 3.0 and again.plan is None


def test_inference_layers_come_from_each_result_own_method(model_and_batches):
    model, batches = model_and_batches
    autobit = create_method("autobit", quantizers=rtn_specs(), target_bit=3.0)
    results = drive(autobit, model, batches)
    name, result = next(iter(results.items()))
    fresh = AutoBitQuantizer()  # the loader calls it on a default-constructed instance
    module = linears(model)[name]
    expected = create_method("rtn").inference_layer(result, module)
    assert type(fresh.inference_layer(result, module)) is type(expected)
    with pytest.raises(ValueError, match="must name the candidate method"):
        AutoBitQuantizer.empty_layer({"method": "autobit"})


@pytest.mark.skipif("dbf" not in methods(), reason="onecomp-dbf not installed")
def test_low_targets_fall_back_to_dbf_before_calibration(model_and_batches):
    model, _ = model_and_batches
    autobit = create_method("autobit", quantizers=rtn_specs(), target_bit=1.5, dbf_iters=2)
    layers = autobit.choose_layers(linears(model))
    dbf = autobit.plan.candidates[-1]
    assert autobit.plan.dbf_fallback and dbf.method == "dbf" and dbf.nominal_bits == 1.5
    assert autobit.needs() == dbf.needs()
    for row in autobit.plan.rows:  # planned bits are DBF's own prediction
        m = layers[row["layer"]]
        assert row["bits"] == dbf.bits_for((m.out_features, m.in_features), row["layer"])
