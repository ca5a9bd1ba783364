"""AutoBit inside the engine (seed Runner) on the real stories260K model, RTN as candidates."""

from __future__ import annotations

import json

import pytest
import torch

from onecomp_autobit import AutoBitQuantizer, InfeasibleTargetError
from onecomp_autobit.fused import fused_layer_groups
from onecomp_autobit.report import assignment_grid
from onecomp_core import create_method, list_quantizers, load_quantized_model
from onecomp_core.contract import ConfigError, Method
from onecomp_core.registry import UnknownMethodError


def rtn_candidates(bits=(2, 3, 4, 8), groupsize: int = 32) -> list[dict]:
    return [{"method": "rtn", "wbits": b, "groupsize": groupsize} for b in bits]


def autobit(specs, **params) -> AutoBitQuantizer:
    return create_method("autobit", quantizers=specs, **params)


def uniform_bits(layers, bits: int, groupsize: int = 32, per_row: bool = False) -> float:
    """Effective bits of uniform ``bits`` g``groupsize``: ragged last groups, or per row
    where g does not divide (``per_row``)."""
    total = sum(m.weight.numel() for m in layers.values())
    sizes = {
        n: groupsize if m.in_features % groupsize == 0 or not per_row else m.in_features
        for n, m in layers.items()
    }
    paid = sum(m.weight.numel() * (bits + (16 + bits) / sizes[n]) for n, m in layers.items())
    return paid / total


def test_invalid_parameters_are_reported_together():
    with pytest.raises(ConfigError) as info:
        AutoBitQuantizer(
            assignment_strategy="greedy",
            target_bit=-1,
            dbf_iters=0,
            fused_groups="qkv",
            fisher_labels="exact",
            fisher_samples=0,
        ).validate()
    text = str(info.value)
    for needle in (
        "assignment_strategy='greedy'",
        "target_bit=-1",
        "dbf_iters=0",
        "fused_groups",
        "fisher_labels='exact'",
        "fisher_samples=0",
    ):
        assert needle in text
    with pytest.raises(ValueError, match="needs a bit budget"):
        AutoBitQuantizer(assignment_strategy="ilp").validate()


@pytest.fixture(scope="module")
def rtn_run(make_runner, tmp_path_factory):
    """One activation-aware run at raw 3 bits over RTN 2/3/4/8 g32, with a heatmap."""
    png = tmp_path_factory.mktemp("autobit") / "plan.png"
    quantizer = autobit(rtn_candidates(), target_bit=3.0, save_path=str(png))
    quantizer.scored_weights = {}  # keep every scored weight (the validation benchmark's hook)
    runner = make_runner(quantizer)
    runner.run()
    return runner, quantizer, png


def test_plan_keeps_the_budget_ties_fused_groups_and_routes_each_layer(rtn_run):
    runner, quantizer, _ = rtn_run
    plan = quantizer.plan
    # raw 3 bits with group size 32 candidates = uniform 3-bit g32's effective bits
    # (the candidates as given: a ragged last group on the 172-wide down_proj)
    assert plan.effective_target == pytest.approx(uniform_bits(runner.layers, 3))
    assert plan.solver_status == "optimal"
    params = {n: m.weight.numel() for n, m in runner.layers.items()}
    measured = sum(
        runner.results[n].effective_bits(*runner.layers[n].weight.shape) * p
        for n, p in params.items()
    ) / sum(params.values())
    assert measured <= plan.effective_target + 1e-12
    assert measured == pytest.approx(plan.achieved_bits)
    chosen = {r["layer"]: r["candidate"] for r in plan.rows}
    assert len(set(chosen.values())) > 1  # a real mix, not uniform
    groups = fused_layer_groups(list(runner.layers), quantizer.fused_groups)
    assert len(groups) == 10  # q/k/v and gate/up of 5 blocks
    for group in groups:
        assert len({chosen[n] for n in group}) == 1
    for name, result in runner.results.items():
        assert result.method == "rtn"
        assert f"rtn-{result.bits}b-g32" == chosen[name]
        assert result.groupsize == (-1 if name in plan.per_row else 32)
    config = quantizer.to_dict()
    json.dumps(config)
    assert config["assignment"][name]["candidate"] == chosen[name]
    assert [c["label"] for c in config["candidates"]] == [
        "rtn-2b-g32", "rtn-3b-g32", "rtn-4b-g32", "rtn-8b-g32"
    ]  # fmt: skip


def test_scored_weights_are_the_weights_each_column_makes(rtn_run):
    # RTN ignores the statistics, so the weight planning scored for the chosen column is
    # exactly the layer's final weight; every (layer, column) pair is kept
    runner, quantizer, _ = rtn_run
    plan, kept = quantizer.plan, quantizer.scored_weights
    assert set(kept) == {(n, k) for n in runner.layers for k in range(len(plan.columns))}
    for name, result in runner.results.items():
        assert torch.equal(kept[(name, plan.column_for(name))], result.dequantize("cpu"))
    cheap, dear = plan.columns.index((0, False)), plan.columns.index((3, False))
    assert not torch.equal(kept[(name, cheap)], kept[(name, dear)])


def test_a_group_size_that_does_not_divide_offers_ragged_and_per_row(rtn_run):
    runner, quantizer, _ = rtn_run
    plan, results = quantizer.plan, runner.results
    names = list(runner.layers)
    # the four candidates as given, then the same four per row where 32 does not divide
    assert plan.columns == [(c, False) for c in range(4)] + [(c, True) for c in range(4)]
    for i, name in enumerate(names):
        width = runner.layers[name].in_features
        ragged = width % 32 != 0
        assert ragged == ("down_proj" in name)  # stories260K: 172 inputs
        given = [b + (16 + b) / 32 for b in (2, 3, 4, 8)]
        twin = [b + (16 + b) / (width if ragged else 32) for b in (2, 3, 4, 8)]
        assert plan.costs.bits[i] == pytest.approx(given + twin)
        errors = plan.costs.errors[i]
        if ragged:  # one fp16 scale per row loses more than one per 32 inputs
            assert all(errors[c + 4] > errors[c] for c in range(4))
        else:  # the "per row" column is the candidate itself here, scored once
            assert errors[4:] == errors[:4]
        # routing: the layer was quantized with the grouping the ILP chose
        row = next(r for r in plan.rows if r["layer"] == name)
        child = plan.child(name)
        per_row = name in plan.per_row
        assert not per_row or ragged
        assert child.groupsize == row["groupsize"] == (-1 if per_row else 32)
        assert results[name].groupsize == child.groupsize
        groups = 1 if per_row else -(-width // 32)
        assert results[name].scales.shape[1] == groups
        note = "" if not ragged else "per row" if per_row else "ragged last group"
        assert row["note"].startswith(note)
        assert row["bits"] == pytest.approx(
            results[name].effective_bits(*runner.layers[name].weight.shape)
        )
    assert all(c.groupsize == 32 for c in plan.candidates)  # the candidates are unchanged


#: stories260K per block: 34304 weights with 64 inputs (g32 divides), down_proj 64 × 172
RAGGED_2B = 2 + 18 / 32
PER_ROW_2B = (34304 * RAGGED_2B + 11008 * (2 + 18 / 172)) / 45312


def test_the_ilp_picks_the_grouping_per_layer_and_saving_follows(make_runner, tmp_path):
    """One candidate (RTN 2-bit g32): the budget alone decides ragged vs per row on down_proj."""

    def run(target: float, **params):
        quantizer = autobit(
            rtn_candidates(bits=(2,)), target_bit=target, target_bit_is_effective=True,
            assignment_strategy="ilp", **params,
        )  # fmt: skip
        runner = make_runner(quantizer, samples=2, length=32)
        runner.run()
        downs = {n for n in runner.layers if "down_proj" in n}
        assert quantizer.plan.per_row <= downs
        for name, result in runner.results.items():
            assert result.groupsize == (-1 if name in quantizer.plan.per_row else 32)
        return runner, quantizer.plan, downs

    # only the per-row down_projs fit this budget
    _, plan, downs = run(PER_ROW_2B)
    assert plan.per_row == downs
    assert plan.achieved_bits == pytest.approx(PER_ROW_2B)
    # half-way: some down_projs keep their ragged last group (less error), the rest go per row
    runner, plan, downs = run((PER_ROW_2B + RAGGED_2B) / 2)
    assert 0 < len(plan.per_row) < len(downs)
    assert plan.achieved_bits <= plan.effective_target
    out = runner.save_quantized_model(tmp_path / "both")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    for name, row in qc["layers"].items():  # each saved row states its real group size
        assert row["groupsize"] == (-1 if name in plan.per_row else 32)
    assert {qc["layers"][n]["groupsize"] for n in downs} == {-1, 32}
    loaded, _ = load_quantized_model(out, device_map="cpu")
    ids = torch.tensor([[1, 100, 200, 300, 400, 17, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, runner.create_quantized_model()(ids).logits)
    # dividing_groups_only: per row is the only option, even where ragged would fit
    _, plan, downs = run(RAGGED_2B, dividing_groups_only=True)
    assert plan.columns == [(0, True)]
    assert plan.per_row == downs
    assert plan.achieved_bits == pytest.approx(PER_ROW_2B)


def test_plan_predicts_no_more_loss_than_uniform_at_the_same_budget(rtn_run):
    _, quantizer, _ = rtn_run
    plan, costs = quantizer.plan, quantizer.plan.costs
    predicted = sum(r["predicted_error"] for r in plan.rows)
    uniform3 = sum(row[1] for row in costs.errors)  # candidate 1 = 3 bit, exactly on budget
    assert predicted < uniform3
    assert predicted == pytest.approx(sum(row[plan.column_for(n)] for n, row in zip(
        [r["layer"] for r in plan.rows], costs.errors, strict=True
    )))  # fmt: skip


def test_full_kfac_score_ranks_differently_and_the_plan_follows_it(make_runner):
    """Block 0's k_proj of stories260K: the diagonal score (a, b) and the full K-FAC score
    (XᵀX/N, GᵀG/N) rank RTN 3-bit g32 symmetric vs asymmetric differently; with a budget
    that allows either, each plan takes its own score's choice there."""
    specs = [
        {"method": "rtn", "wbits": 3, "groupsize": 32, "sym": True},
        {"method": "rtn", "wbits": 3, "groupsize": 32, "sym": False},
    ]
    name = "model.layers.0.self_attn.k_proj"
    best, chosen = {}, {}
    for kind in ("full", "diag"):
        quantizer = autobit(
            specs, target_bit=16.0, target_bit_is_effective=True, enable_fused_groups=False,
            planning_hessian=kind,
        )  # fmt: skip
        runner = make_runner(quantizer)
        runner.run()
        errors = quantizer.plan.costs.errors[list(runner.layers).index(name)]
        best[kind] = min(range(len(specs)), key=errors.__getitem__)
        chosen[kind] = quantizer.plan.choice[name]
        assert runner.results[name].sym == specs[chosen[kind]]["sym"]
    assert best["full"] != best["diag"]
    assert chosen == best


def test_statistics_follow_the_chosen_candidates(make_runner):
    from onecomp_core.testing import HessianRTNPlugin, registered_plugin

    with registered_plugin(HessianRTNPlugin()):
        specs = [
            {"method": "rtn", "wbits": 2, "groupsize": 32},
            {"method": "hessian_rtn", "wbits": 8},
        ]
        quantizer = autobit(specs, target_bit=8.0, target_bit_is_effective=True)
        # before planning: the widest need of any candidate; HessianRTN wants full H, sequential
        needs = quantizer.needs()
        assert needs.inputs == "full" and needs.sequential and needs.moments is not None
        runner = make_runner(quantizer)
        runner.run()  # HessianRTN asserts it receives a full (in × in) H
        methods = {r.method for r in runner.results.values()}
        assert "hessian_rtn" in methods
        assert quantizer.needs().inputs == "full"


def test_heatmap_and_table_are_written(rtn_run):
    pytest.importorskip("matplotlib")
    _, quantizer, png = rtn_run
    assert png.is_file() and png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(png.with_suffix(".json").read_text())
    assert len(table["layers"]) == 35
    assert table["measured_bits"] == pytest.approx(quantizer.plan.achieved_bits)
    rows, cols, grid = assignment_grid(
        [r["layer"] for r in table["layers"]], [r["measured_bits"] for r in table["layers"]]
    )
    assert cols == ["0", "1", "2", "3", "4"]
    assert rows == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ]  # fmt: skip
    assert grid[3][2] == table["layers"][2 * 7 + 3]["measured_bits"]


def test_infeasible_target_names_the_minimum(make_runner, rtn_specs):
    quantizer = autobit(
        rtn_specs, target_bit=1.85, dbf_threshold=1.0, auto_dbf=False, assignment_strategy="ilp"
    )
    with pytest.raises(InfeasibleTargetError) as info:
        make_runner(quantizer).run()
    text = str(info.value)
    assert "minimum feasible target is 2.4513" in text  # 2-bit g32, per row on down_proj
    # the same in raw bits, converted with the candidates as given (ragged g32 on down_proj):
    # t + (16 + t)/32 = 2.4513
    assert "target_bit >= 1.892" in text


def test_manual_strategy_first_match_wins(make_runner):
    specs = [
        {"method": "rtn", "wbits": 4, "groupsize": 32, "include_layer_keywords": ["self_attn"]},
        {"method": "rtn", "wbits": 2, "groupsize": 32},
    ]
    quantizer = autobit(specs, assignment_strategy="manual")
    results = make_runner(quantizer).run()
    assert len(results) == 35
    for name, result in results.items():
        assert result.bits == (4 if "self_attn" in name else 2)


def test_manual_strategy_refuses_a_split_fused_group(make_runner):
    specs = [
        {"method": "rtn", "wbits": 4, "include_layer_keywords": ["q_proj"]},
        {"method": "rtn", "wbits": 2},
    ]
    with pytest.raises(ValueError, match="fused group split"):
        make_runner(autobit(specs, assignment_strategy="manual")).run()


def test_dbf_not_installed_is_said_clearly(make_runner, rtn_specs, monkeypatch):
    create = Method.create

    def no_dbf(method, **params):
        if method == "dbf":
            raise UnknownMethodError(f"unknown quantization method {method!r}")
        return create(method, **params)

    monkeypatch.setattr(Method, "create", staticmethod(no_dbf))
    with pytest.raises(ValueError, match=r"'dbf' method is not installed.*auto_dbf=False"):
        make_runner(autobit(rtn_specs, target_bit=1.5)).run()


needs_dbf = pytest.mark.skipif("dbf" not in list_quantizers(), reason="onecomp-dbf not installed")


@needs_dbf
def test_dbf_fallback_at_low_targets(make_runner, rtn_specs, tmp_path):
    quantizer = autobit(rtn_specs, target_bit=1.5, dbf_iters=3, num_layers=7)
    runner = make_runner(quantizer, samples=4, length=32)
    results = runner.run()
    assert quantizer.plan.dbf_fallback
    assert {r.method for r in results.values()} == {"dbf"}
    assert {r.target_bits for r in results.values()} == {1.5}
    out = runner.save_quantized_model(tmp_path / "m")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "autobit" and qc["quant_method"] == "onecomp" and qc["dbf_fallback"]
    assert {row["method"] for row in qc["layers"].values()} == {"dbf"}
    model, _ = load_quantized_model(out, device_map="cpu")
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    expected = runner.create_quantized_model()(ids).logits
    assert torch.equal(model(ids).logits, expected)


def test_saved_config_rebuilds_the_candidates(rtn_run):
    _, quantizer, _ = rtn_run
    config = json.loads(json.dumps(quantizer.to_dict()))
    config["fisher_labels"], config["fisher_samples"] = "data", 2  # as a saved run would say
    again = AutoBitQuantizer.from_dict(config)
    assert again.target_bit == 3.0 and again.assignment_strategy == "activation_aware"
    assert (again.fisher_labels, again.fisher_samples) == ("data", 2)
    assert again.planning_hessian == quantizer.planning_hessian == config["planning_hessian"]
    rebuilt = [(q.method, q.wbits, q.groupsize) for q in again.quantizers]
    assert rebuilt == [("rtn", b, 32) for b in (2, 3, 4, 8)]


def test_whole_model_hooks_reach_the_chosen_candidates(make_runner):
    """A router must forward prepare/on_model_done: DBF distils there, so may any plugin."""
    from dataclasses import dataclass

    from onecomp_core import RTN
    from onecomp_core.contract import Needs

    @dataclass
    class Recording(RTN):
        def needs(self):
            return Needs(model_pass=True)  # its on_model_done reads the batches

        def prepare(self, view):
            self.calls = [("prepare", len(view.batches), sorted(view.layers), len(view.results))]

        def on_model_done(self, view):
            self.calls.append(("done", len(view.batches), sorted(view.layers), len(view.results)))
            return {}

    chosen = Recording(wbits=4, groupsize=32)
    others = [{"method": "rtn", "wbits": 8, "groupsize": 32}]
    quantizer = autobit([chosen, *others], target_bit=4.0, num_layers=7)
    runner = make_runner(quantizer, samples=4, length=32)
    runner.run()
    child = next(c for c in quantizer.plan.candidates if isinstance(c, Recording))
    mine = sorted(n for n in quantizer.plan.choice if quantizer.plan.child(n) is child)
    assert mine  # the 4-bit candidate got layers
    (_, batches, layers, results), done = child.calls
    assert batches > 0 and layers == mine and results == 0
    assert done == ("done", batches, mine, len(mine))
