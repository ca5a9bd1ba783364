"""The QuIP method: registration, bits, parameters, the layer, and a save → load run on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model, registry
from onecomp_core.contract import ConfigError, LayerJob, Method, Needs

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
        q = QuIP(wbits=4, groupsize=16, seed=5, incoherent_layers=None, only_if_better=False)
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
    with pytest.raises(ValueError, match="in_seed missing"):
        QuIP.empty_layer(row)
    with pytest.raises(ValueError, match="out_seed=-2"):
        QuIP.empty_layer({**row, "in_seed": None, "out_seed": -2})


def _layer_job(name: str, seed: int = 0) -> LayerJob:
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(40, 12, bias=False).requires_grad_(False)
    layer.weight.data = torch.randn(12, 40, generator=g)
    layer.weight.data[:, :2] *= 8
    x = torch.randn(300, 40, generator=g) * torch.exp(torch.randn(1, 40, generator=g))
    return LayerJob(name, layer, hessian=2 * x.t() @ x / 300)


def test_layers_outside_the_list_are_plain_ldlq_which_is_gptq() -> None:
    job = _layer_job("model.layers.0.self_attn.q_proj")
    q = QuIP(wbits=3, incoherent_layers=["down_proj"])
    result = q.quantize(job)
    assert (result.in_seed, result.out_seed) == (None, None)
    assert torch.equal(result.input_scale, torch.ones(40, dtype=torch.float16))
    gptq = Method.create("gptq", wbits=3, sym=False, actorder=True, mse=True)
    assert torch.equal(result.codes, gptq.quantize(job).codes)
    packed = q.inference_layer(result, job.module)
    probe = torch.randn(2, 40)
    dense = torch.nn.functional.linear(probe, result.dequantize().float())
    assert torch.allclose(packed(probe), dense, atol=1e-3 * float(dense.abs().max()))


def test_only_if_better_keeps_the_solution_with_the_lower_proxy_error() -> None:
    job = _layer_job("model.layers.0.mlp.down_proj", seed=1)
    h = job.hessian

    def err(result: QuIPResult) -> float:
        delta = job.module.weight - result.dequantize().float()
        return float(torch.trace(delta @ h @ delta.t()))

    rotated = QuIP(wbits=3, only_if_better=False).quantize(job)
    plain = QuIP(wbits=3, incoherent_layers=[]).quantize(job)
    chosen = QuIP(wbits=3).quantize(job)
    assert rotated.in_seed == 0 and plain.in_seed is None
    best = rotated if err(rotated) < err(plain) else plain
    assert chosen.in_seed == best.in_seed and torch.equal(chosen.codes, best.codes)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    # down_proj rotated, the other layers plain (both kinds of rows); no clipping search: fast
    quantizer = QuIP(wbits=3, mse=False, incoherent_layers=["down_proj"], only_if_better=False)
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=64, num_calibration_samples=8, batch_size=4
    )
    model_config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    runner = Runner(model_config, quantizer, calibration, show_progress=False, save_dtype="float32")
    runner.run()
    return runner, runner.save_quantized_model(tmp_path_factory.mktemp("quip") / "model")


def test_saved_model_is_the_packed_codes_and_loads_to_the_same_logits(saved_run) -> None:
    runner, folder = saved_run
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "quip" and qc["bits"] == 3
    down = qc["layers"]["model.layers.2.mlp.down_proj"]  # 172 = 4·43 inputs
    assert (down["in_features"], down["in_seed"], down["out_seed"]) == (172, 0, 1)
    up = qc["layers"]["model.layers.2.mlp.up_proj"]
    assert (up["in_seed"], up["out_seed"]) == (None, None)
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
