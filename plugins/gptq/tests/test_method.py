"""The GPTQ method: registration, needs, bits, the per-layer hooks, and a run on the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model, registry
from onecomp_core.contract import LayerJob, Needs

from onecomp_gptq import GPTQ, GPTQLinear, GPTQResult

ASSETS = Path(__file__).resolve().parents[4] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"


def test_registered_through_the_entry_point() -> None:
    assert registry.get_method("gptq") is GPTQ
    q = registry.create_method("gptq", wbits=3, groupsize=32)
    assert q.needs() == Needs(inputs="full", sequential=True)
    assert GPTQ(true_sequential=False).needs() == Needs(inputs="full")


def test_bits_follow_the_layer_name() -> None:
    q = GPTQ(wbits=3, groupsize=32, mlp_wbits=4, module_wbits={"a.q_proj": 8})
    assert q.nominal_bits == 3.0
    assert q.bits_for((64, 128), "a.k_proj") == 3 + 19 / 32
    assert q.bits_for((64, 128), "a.mlp.up_proj") == 4 + 20 / 32
    assert q.bits_for((64, 128), "a.q_proj") == 8 + 24 / 32
    assert GPTQ(wbits=4).bits_for((64, 172)) == 4 + 20 / 172


def test_with_bits_sets_the_default_width_only() -> None:
    q = GPTQ(wbits=4, mlp_wbits=3, groupsize=32)
    two = q.with_bits(2)
    assert (two.wbits, two.mlp_wbits, two.groupsize, q.wbits) == (2, 3, 32, 4)
    assert type(two.wbits) is int and type(q.with_bits(2.0).wbits) is int
    with pytest.raises(ValueError, match="wbits=2.5"):
        q.with_bits(2.5)


def test_quantize_layer_needs_the_full_hessian() -> None:
    with pytest.raises(ValueError, match="full Hessian"):
        GPTQ().quantize_layer(torch.nn.Linear(8, 4), hessian=torch.ones(8))


def test_a_job_gets_the_bits_and_group_size_of_its_name() -> None:
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(40, 6, bias=True)
    layer.weight.data = torch.randn(6, 40, generator=g)
    x = torch.randn(200, 40, generator=g)
    q = GPTQ(wbits=4, groupsize=16, mlp_wbits=3, mlp_groupsize=-1, actorder=True, sym=True)
    mlp = q.quantize(LayerJob("model.layers.0.mlp.up_proj", layer, hessian=2 * x.t() @ x / 200))
    attn = q.quantize(LayerJob("model.layers.0.self_attn.q_proj", layer, hessian=torch.eye(40)))
    assert isinstance(mlp, GPTQResult) and mlp.method == "gptq" and mlp.fallback is None
    assert (mlp.bits, mlp.groupsize, mlp.scales.shape) == (3, -1, (6, 1))
    assert (attn.bits, attn.groupsize, attn.scales.shape) == (4, 16, (6, 3))
    assert mlp.row(6, 40, True) == {
        "method": "gptq",
        "in_features": 40,
        "out_features": 6,
        "bias": True,
        "bits": 3,
        "groupsize": -1,
        "sym": True,
        "desc_act": True,
        "checkpoint_format": "gptq",
        "effective_bits": round(3 + 19 / 40, 6),
    }
    packed = q.inference_layer(mlp, layer)
    assert isinstance(packed, GPTQLinear) and torch.equal(packed.dequantize(), mlp.dequantize())
    empty = GPTQ().empty_layer(mlp.row(6, 40, True))  # the loader's default-constructed GPTQ
    empty.load_state_dict(packed.state_dict())
    x = torch.randn(3, 40)
    assert torch.equal(empty(x), packed(x))


def test_legacy_v1_asymmetric_zero_points_stay_decodable() -> None:
    layer = torch.nn.Linear(16, 4, bias=False)
    layer.weight.data = torch.rand(4, 16) + 0.5  # all positive: min-max zero would be 0
    q = GPTQ(sym=False, checkpoint_format="gptq")
    result = q.quantize_layer(layer, hessian=torch.eye(16))
    assert int(result.zeros.min()) >= 1
    packed = q.inference_layer(result, layer)
    naive_zero = (packed.qzeros[0, 0].item() & 0xF) + 1  # what an unmasking v1 loader reads
    assert naive_zero == int(result.zeros[0, 0])


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """4-bit g32 with 3-bit MLPs and one 8-bit layer, act-order, on the real model."""
    quantizer = GPTQ(
        wbits=4,
        groupsize=32,
        actorder=True,
        mlp_wbits=3,
        module_wbits={"model.layers.0.self_attn.q_proj": 8},
    )
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=64, num_calibration_samples=8, batch_size=4
    )
    model_config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    runner = Runner(model_config, quantizer, calibration, show_progress=False, save_dtype="float32")
    runner.run()
    out = runner.save_quantized_model(tmp_path_factory.mktemp("gptq") / "model")
    return runner, out


def test_runner_records_per_layer_settings(mixed_run) -> None:
    runner, _ = mixed_run
    results = runner.results
    assert all(isinstance(r, GPTQResult) and r.fallback is None for r in results.values())
    assert results["model.layers.0.self_attn.q_proj"].bits == 8
    assert results["model.layers.2.mlp.down_proj"].bits == 3
    assert results["model.layers.2.self_attn.o_proj"].bits == 4
    down = results["model.layers.2.mlp.down_proj"]  # 172 inputs: 5 groups of 32 and one of 12
    assert down.scales.shape == (64, 6)
    assert sorted(torch.bincount(down.g_idx.long()).tolist()) == [12, 32, 32, 32, 32, 32]
    assert down.codes.dtype == torch.uint8


def test_saved_model_loads_back_with_same_logits(mixed_run) -> None:
    runner, folder = mixed_run
    import json

    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "gptq" and qc["bits"] == 4 and qc["desc_act"] is True
    assert qc["layers"]["model.layers.2.mlp.down_proj"]["bits"] == 3
    model, _ = load_quantized_model(folder)
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, GPTQLinear) and layer.bits == 3
    expected_weight = runner.results["model.layers.2.mlp.down_proj"]
    assert torch.equal(layer.dequantize(), expected_weight.dequantize())
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        expected = runner.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    # the run writes fp16-rounded dense weights back; the layer dequantizes in fp32
    assert ((got - expected).norm() / expected.norm()) < 1e-3


def test_a_handed_over_hessian_is_freed_once_its_factor_is_made(monkeypatch) -> None:
    """The engine hands H over (LayerJob.hands_over): the solve drops it before the column
    sweep, so the largest matrix of a run and its inverse factor never both outlive that step;
    a job that keeps H (a router's) gets the same codes."""
    import weakref

    import onecomp_core.kernels.gptq_solve as solve

    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 16, bias=False)
    linear.weight.data = torch.randn(16, 64, generator=g)
    x = torch.randn(256, 64, generator=g)
    alive: list[bool] = []
    sweep = solve._best_candidate

    def watched(*args, **kwargs):
        alive.append(handed() is not None)
        return sweep(*args, **kwargs)

    monkeypatch.setattr(solve, "_best_candidate", watched)
    kept = LayerJob("l", linear, hessian=2 * x.t() @ x / 256)
    handed = weakref.ref(kept.hessian)
    reference = GPTQ(wbits=3).quantize(kept)
    assert kept.hessian is not None and alive == [True]

    alive.clear()
    job = LayerJob("l", linear, hessian=2 * x.t() @ x / 256, hands_over=True)
    handed = weakref.ref(job.hessian)
    result = GPTQ(wbits=3).quantize(job)
    assert job.hessian is None and alive == [False]
    assert torch.equal(result.codes, reference.codes)
    assert torch.equal(result.scales, reference.scales)
