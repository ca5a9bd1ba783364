"""The QuIP method: registration, bits, parameters, the layer, and a save → load run on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model, registry
from onecomp_core.contract import ConfigError, LayerJob, Needs

from onecomp_quip import QuIP, QuIPLinear, QuIPResult

ASSETS = Path(__file__).resolve().parents[4] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"


def test_registered_with_its_needs_and_bits() -> None:
    q = registry.create_method("quip", wbits=3)
    assert isinstance(q, QuIP) and q.needs() == Needs(inputs="full", sequential=True)
    assert q.nominal_bits == 3.0
    assert q.bits_for((64, 172)) == 3 + 19 / 172 + 16 / 64


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"wbits": 9}, "wbits=9"),
        ({"groupsize": 0}, "groupsize=0"),
        ({"seed": -1}, "seed=-1"),
        ({"percdamp": 0}, "percdamp=0"),
    ],
)
def test_bad_parameters_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create_method("quip", **params)


def test_quantize_layer_needs_the_full_hessian() -> None:
    with pytest.raises(ValueError, match="full Hessian"):
        QuIP().quantize_layer(torch.nn.Linear(8, 4), hessian=torch.ones(8))


def test_layer_computes_the_dense_weight_and_loads_from_its_row() -> None:
    """Widths 43 (prime: one dense 43×43 factor) and 40 = 8·5 in, 12 = 4·3 out; with a bias."""
    g = torch.Generator().manual_seed(0)
    for n in (40, 43):
        layer = torch.nn.Linear(n, 12, bias=True)
        layer.weight.data = torch.randn(12, n, generator=g)
        layer.requires_grad_(False)
        x = torch.randn(300, n, generator=g) * torch.exp(torch.randn(1, n, generator=g))
        q = QuIP(wbits=4, groupsize=16, seed=5)
        result = q.quantize(
            LayerJob("model.layers.0.mlp.up_proj", layer, hessian=2 * x.t() @ x / 300)
        )
        assert isinstance(result, QuIPResult) and result.method == "quip"
        row = result.row(12, n, True)
        assert (row["in_seed"], row["out_seed"], row["bits"], row["groupsize"]) == (5, 6, 4, 16)
        packed = q.inference_layer(result, layer)
        assert isinstance(packed, QuIPLinear)
        probe = torch.randn(3, n, generator=g)
        dense = torch.nn.functional.linear(
            probe, result.dequantize().float(), layer.bias.half().float()
        )
        assert torch.allclose(packed(probe), dense, atol=2e-3 * float(dense.abs().max()))
        assert torch.equal(packed.dequantize(), result.dequantize())
        empty = QuIP.empty_layer(row)  # what a loader builds from the saved row
        empty.load_state_dict(packed.state_dict())
        assert torch.equal(empty(probe), packed(probe))


def test_a_row_without_seeds_is_refused() -> None:
    row = {"in_features": 8, "out_features": 4, "bits": 4, "groupsize": -1, "bias": False}
    with pytest.raises(ValueError, match="in_seed=None"):
        QuIP.empty_layer(row)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    quantizer = QuIP(wbits=3, mse=False)  # the clipping search is tested elsewhere: keep it fast
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=64, num_calibration_samples=8, batch_size=4
    )
    model_config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    runner = Runner(model_config, quantizer, calibration, show_progress=False)
    runner.run()
    return runner, runner.save_quantized_model(tmp_path_factory.mktemp("quip") / "model")


def test_saved_model_is_the_packed_codes_and_loads_to_the_same_logits(saved_run) -> None:
    runner, folder = saved_run
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "quip" and qc["bits"] == 3
    down = qc["layers"]["model.layers.2.mlp.down_proj"]  # 172 = 4·43 inputs
    assert (down["in_features"], down["in_seed"], down["out_seed"]) == (172, 0, 1)
    model, _ = load_quantized_model(folder)
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, QuIPLinear) and layer.qweight.dtype == torch.int32
    assert torch.equal(
        layer.dequantize(), runner.results["model.layers.2.mlp.down_proj"].dequantize()
    )
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        expected = runner.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert ((got - expected).norm() / expected.norm()) < 1e-3
