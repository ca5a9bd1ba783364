"""The GPTQ quantizer: parameters, per-layer overrides, saved config, registry, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from onecomp_core import create_quantizer, get_quantizer
from onecomp_core.calibration import CalibrationConfig
from onecomp_core.model_config import ModelConfig
from onecomp_core.runner import Runner
from onecomp_core.serialization import load_quantized_model

from onecomp_gptq import GPTQ, GPTQLinear, GPTQResult

ASSETS = Path(__file__).resolve().parents[4] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "wikitext2-valid.tokens.txt"


def test_registered_through_the_entry_point() -> None:
    assert get_quantizer("gptq") is GPTQ
    q = create_quantizer("gptq", wbits=3, groupsize=32)
    assert q.statistics == "full" and q.true_sequential


def test_every_bad_parameter_in_one_error() -> None:
    with pytest.raises(ValueError) as info:
        create_quantizer(
            "gptq",
            wbits=9,
            groupsize=0,
            sym="yes",
            percdamp=0,
            blocksize=0,
            q_grid=0,
            q_norm=-1,
            mlp_wbits=0,
            mlp_groupsize=-2,
            module_wbits={"model.layers.0.mlp.down_proj": 12},
            checkpoint_format="awq",
            clip_candidates=-1,
        )
    message = str(info.value)
    for expected in (
        "wbits=9",
        "groupsize=0",
        "sym='yes'",
        "percdamp=0",
        "blocksize=0",
        "q_grid=0",
        "q_norm=-1",
        "mlp_wbits=0",
        "mlp_groupsize=-2",
        "module_wbits['model.layers.0.mlp.down_proj']=12",
        "checkpoint_format='awq'",
        "clip_candidates=-1",
    ):
        assert expected in message


def test_override_priority_exact_name_then_mlp_then_default() -> None:
    q = GPTQ(wbits=4, groupsize=128, mlp_wbits=3, mlp_groupsize=32)
    q.module_wbits = {"model.layers.1.mlp.down_proj": 8, "model.layers.1.self_attn.q_proj": 2}
    assert q.layer_bits("model.layers.1.mlp.down_proj") == 8
    assert q.layer_bits("model.layers.1.mlp.up_proj") == 3
    assert q.layer_bits("model.layers.1.self_attn.q_proj") == 2
    assert q.layer_bits("model.layers.1.self_attn.k_proj") == 4
    assert q.layer_groupsize("model.layers.1.mlp.up_proj") == 32
    assert q.layer_groupsize("model.layers.1.self_attn.k_proj") == 128


def test_quant_config_has_gptq_keys_and_round_trips() -> None:
    q = GPTQ(wbits=3, groupsize=32, actorder=True, sym=False, checkpoint_format="gptq_v2")
    cfg = q.config_for_storage()
    assert {k: cfg[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym")} == {
        "quant_method": "gptq",
        "bits": 3,
        "group_size": 32,
        "desc_act": True,
        "sym": False,
    }
    assert cfg["checkpoint_format"] == "gptq_v2"
    back = GPTQ.from_quant_config(cfg)
    assert (back.wbits, back.groupsize, back.actorder, back.sym) == (3, 32, True, False)


def test_quantize_layer_needs_the_full_hessian() -> None:
    with pytest.raises(ValueError, match="full Hessian"):
        GPTQ().quantize_layer(torch.nn.Linear(8, 4), hessian=torch.ones(8))


def test_legacy_v1_asymmetric_zero_points_stay_decodable() -> None:
    layer = torch.nn.Linear(16, 4, bias=False)
    layer.weight.data = torch.rand(4, 16) + 0.5  # all positive: min-max zero would be 0
    q = GPTQ(sym=False, checkpoint_format="gptq")
    result = q.quantize_layer(layer, hessian=torch.eye(16))
    assert int(result.zeros.min()) >= 1
    packed = q.create_inference_layer(result, layer)
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
    runner = Runner(model_config, quantizer, calibration, show_progress=False)
    runner.run()
    out = runner.save_quantized_model(tmp_path_factory.mktemp("gptq") / "model")
    return runner, out


def test_runner_records_per_layer_settings(mixed_run) -> None:
    runner, _ = mixed_run
    results = runner.quantizer.results
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
    assert qc["quant_method"] == "gptq" and qc["bits"] == 4 and qc["desc_act"] is True
    assert qc["layers"]["model.layers.2.mlp.down_proj"]["bits"] == 3
    model, _ = load_quantized_model(folder)
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, GPTQLinear) and layer.bits == 3
    expected_weight = runner.quantizer.results["model.layers.2.mlp.down_proj"]
    assert torch.equal(layer.dequantize(), expected_weight.compute_dequantized_weight())
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        expected = runner.model(input_ids=ids).logits
        got = model(input_ids=ids).logits
    # the run writes fp16-rounded dense weights back; the layer dequantizes in fp32
    assert ((got - expected).norm() / expected.norm()) < 1e-3
