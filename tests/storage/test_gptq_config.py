"""GPTQ's ecosystem keys: dynamic, modules_in_block_to_quantize, lm_head, and the own label."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from onecomp_core.contract import LayerJob
from onecomp_core.rtn import RTN
from onecomp_core.storage import build_artifact, load_quantized_model, save_quantized_model
from onecomp_core.storage.artifact import (
    GPTQ_QUANT_METHOD,
    OWN_QUANT_METHOD,
    method_of,
    saved_quant_method,
)
from onecomp_core.storage.gptq_config import gptq_keys, kernel_problem
from onecomp_core.testing import tiny_model

BASE = {"bits": 4, "group_size": -1, "sym": True}
EXTRA = {"calibration_hash": None, "qep": None}


def rows_of(model: nn.Module, skip: tuple[str, ...] = ("lm_head",), **settings) -> dict:
    """RTN rows for every Linear of ``model`` but ``skip`` (per-name settings: name → dict)."""
    rows = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name not in skip:
            row = {"method": "rtn", "in_features": module.in_features}
            row |= {"out_features": module.out_features, "bits": 4, "groupsize": -1, "sym": True}
            rows[name] = row | settings.get(name, {})
    return rows


def test_uniform_rows_get_the_plain_gptq_keys() -> None:
    model = tiny_model("llama")  # hidden 32, intermediate 72: whole 32-bit words at 4 bits
    keys = gptq_keys(model, rows_of(model), BASE)
    assert keys == {
        "desc_act": False,
        "checkpoint_format": "gptq_v2",  # RTN stores raw zero points
        "format": "gptq_v2",
        "lm_head": False,
    }


def test_a_layer_left_out_of_every_block_is_named_relative_to_the_block() -> None:
    model = tiny_model("llama")
    skip = ("lm_head", "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj")
    keys = gptq_keys(model, rows_of(model, skip), BASE)
    assert keys["modules_in_block_to_quantize"] == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
        + ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    ]
    assert keys["dynamic"] == {
        r"-:^model\.layers\.0\.self_attn\.o_proj$": {},
        r"-:^model\.layers\.1\.self_attn\.o_proj$": {},
    }


def test_a_layer_left_out_of_one_block_makes_the_names_full() -> None:
    model = tiny_model("llama")
    rows = rows_of(model, ("lm_head", "model.layers.1.mlp.up_proj"))
    keys = gptq_keys(model, rows, BASE)
    assert keys["modules_in_block_to_quantize"] == [list(rows)]
    assert list(keys["dynamic"]) == [r"-:^model\.layers\.1\.mlp\.up_proj$"]


def test_per_layer_settings_become_dynamic_overrides() -> None:
    model = tiny_model("llama")
    down, q = "model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"
    rows = rows_of(model, **{down: {"bits": 8, "sym": False}, q: {"groupsize": 16}})
    keys = gptq_keys(model, rows, BASE)
    assert keys["dynamic"] == {
        r"+:^model\.layers\.0\.self_attn\.q_proj$": {"group_size": 16},
        r"+:^model\.layers\.1\.mlp\.down_proj$": {"bits": 8, "sym": False},
    }
    assert keys["lm_head"] is False and "modules_in_block_to_quantize" not in keys


def test_a_quantized_head_is_not_gptq() -> None:
    model = tiny_model("llama")
    reason = gptq_keys(model, rows_of(model, ()), BASE)
    assert reason.startswith("the output head lm_head is quantized")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"bits": 5}, "5-bit codes"),
        ({"groupsize": 24}, "group size 24"),
        ({"in_features": 172}, "172 inputs, which do not fill whole 32-bit words at 4 bits"),
        ({"in_features": 96, "groupsize": 64}, "96 inputs, not a multiple of its group size 64"),
        ({"out_features": 4}, "4 outputs"),
    ],
)
def test_a_layer_no_kernel_takes_is_named(change: dict, why: str) -> None:
    row = {"method": "rtn", "in_features": 64, "out_features": 64, "bits": 4, "groupsize": -1}
    assert kernel_problem("x", row) is None
    assert why in kernel_problem("x", row | change)


def test_mixed_zero_formats_and_other_methods_are_not_gptq() -> None:
    model = tiny_model("llama")
    q = "model.layers.0.self_attn.q_proj"
    rows = rows_of(model, **{q: {"method": "gptq_like", "checkpoint_format": "gptq"}})
    assert "zero-point formats" in gptq_keys(model, rows, BASE)
    rows = rows_of(model, **{q: {"method": "nosuch"}})
    assert gptq_keys(model, rows, BASE) == f"layer {q} is quantized by nosuch, not on GPTQ's grid"


def test_the_naming_rule() -> None:
    assert saved_quant_method("rtn", True) == GPTQ_QUANT_METHOD
    assert saved_quant_method("rtn", False) == OWN_QUANT_METHOD == "onecomp"
    assert saved_quant_method("nosuch", False) == "onecomp"  # not a GPTQ-layout method
    assert method_of({"quant_method": "gptq", "method": "rtn"}) == "rtn"
    assert method_of({"quant_method": "dbf"}) == "dbf"  # folders saved before the key


def _rtn_artifact(model: nn.Module):
    method = RTN(wbits=4)
    results = {
        name: method.quantize(LayerJob(name, module))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    return build_artifact(model, method, results, None, EXTRA)


def test_rtn_in_kernel_shapes_is_onecomp_because_gptqmodel_misreads_gptq_v2(
    tmp_path, capfd
) -> None:
    # tests/compat measured GPTQModel 7.6's loader reading other weights from RTN's
    # gptq_v2 layout without an error: such a folder must not claim to be plain gptq
    model = tiny_model("llama")
    capfd.readouterr()
    out = save_quantized_model(_rtn_artifact(model), tmp_path / "q")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["method"], qc["quantizer"]) == ("onecomp", "rtn", "RTN")
    assert "format" not in qc and "dynamic" not in qc
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gptq_v2 layout, which GPTQModel's loader misreads" in err[0]
    loaded, _ = load_quantized_model(out)  # onecomp reads it by its layer table
    ids = torch.arange(1, 20).unsqueeze(0)
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=ids).logits).all()


def test_a_width_no_kernel_takes_gets_the_own_label_and_one_line(capfd) -> None:
    model = tiny_model("llama")
    for layer in model.model.layers:  # intermediate 36: 36 inputs fill 4.5 words at 4 bits
        layer.mlp.gate_proj = nn.Linear(32, 36, bias=False)
        layer.mlp.up_proj = nn.Linear(32, 36, bias=False)
        layer.mlp.down_proj = nn.Linear(36, 32, bias=False)
    capfd.readouterr()
    qc = _rtn_artifact(model).quantization_config
    assert (qc["quant_method"], method_of(qc)) == ("onecomp", "rtn")
    assert "dynamic" not in qc and "format" not in qc
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onecomp: saved with quant_method 'onecomp'")
    assert "gate_proj has 36 outputs, which do not fill whole 32-bit words" in err[0]
