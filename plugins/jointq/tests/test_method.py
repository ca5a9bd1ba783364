"""The JointQ method: registration, bits, parameters, and a save → load run in the GPTQ layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model, registry
from onecomp_core.contract import ConfigError, LayerJob, Needs
from onecomp_core.kernels import PackedIntLinear

from onecomp_jointq import JointQ, JointQResult

ASSETS = Path(__file__).resolve().parents[4] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"


def test_registered_with_its_needs_and_bits() -> None:
    q = registry.create_method("jointq", bits=3, group_size=32)
    assert isinstance(q, JointQ) and q.needs() == Needs(inputs="full", sequential=True)
    assert q.nominal_bits == 3.0 and q.bits_for((64, 128)) == 3 + 19 / 32
    assert JointQ(group_size=None).bits_for((64, 172)) == JointQ(group_size=-1).bits_for((64, 172))
    assert JointQ(bits=4, group_size=-1).bits_for((64, 172)) == 4 + 20 / 172


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bits": 0}, "bits=0"),
        ({"group_size": 0}, "group_size=0"),
        ({"regularization_mode": "full"}, "regularization_mode='full'"),
        ({"regularization_lambda": -0.1}, "regularization_lambda=-0.1"),
        ({"checkpoint_format": "awq"}, "checkpoint_format='awq'"),
    ],
)
def test_bad_parameters_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create_method("jointq", **params)


def test_quantize_layer_needs_the_full_hessian() -> None:
    with pytest.raises(ValueError, match="full Hessian"):
        JointQ().quantize_layer(torch.nn.Linear(8, 4), hessian=torch.ones(8))


def test_layer_row_and_packed_layer_follow_the_gptq_layout() -> None:
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(40, 6, bias=True).requires_grad_(False)
    layer.weight.data = torch.randn(6, 40, generator=g)
    x = torch.randn(200, 40, generator=g)
    q = JointQ(bits=3, group_size=16, mse=False)
    result = q.quantize(LayerJob("model.layers.0.mlp.up_proj", layer, hessian=2 * x.t() @ x / 200))
    assert isinstance(result, JointQResult) and result.final_error <= result.start_error
    row = result.row(6, 40, True)
    assert {k: row[k] for k in ("bits", "groupsize", "sym", "desc_act", "checkpoint_format")} == {
        "bits": 3,
        "groupsize": 16,
        "sym": False,
        "desc_act": True,
        "checkpoint_format": "gptq",
    }
    packed = q.inference_layer(result, layer)
    assert isinstance(packed, PackedIntLinear) and torch.equal(
        packed.dequantize(), result.dequantize()
    )
    empty = JointQ.empty_layer(row)
    empty.load_state_dict(packed.state_dict())
    probe = torch.randn(3, 40)
    assert torch.equal(empty(probe), packed(probe))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    quantizer = JointQ(bits=3, group_size=32, mse=False)
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=64, num_calibration_samples=8, batch_size=4
    )
    model_config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    runner = Runner(model_config, quantizer, calibration, show_progress=False, save_dtype="float32")
    runner.run()
    return runner, runner.save_quantized_model(tmp_path_factory.mktemp("jointq") / "model")


def test_saved_model_loads_back_with_the_same_logits(saved_run) -> None:
    runner, folder = saved_run
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "jointq"
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (3, 32, False, True)
    down = runner.results[
        "model.layers.2.mlp.down_proj"
    ]  # 172 inputs: 5 groups of 32 and one of 12
    assert sorted(torch.bincount(down.g_idx.long()).tolist()) == [12, 32, 32, 32, 32, 32]
    model, _ = load_quantized_model(folder)
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, PackedIntLinear) and torch.equal(layer.dequantize(), down.dequantize())
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        expected = runner.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert ((got - expected).norm() / expected.norm()) < 1e-3
