"""OneBit through the engine: block fine-tuning, save → load, and as an AutoBit candidate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp_core import (
    CalibrationConfig,
    ModelConfig,
    Runner,
    create_method,
    list_quantizers,
    load_quantized_model,
)
from onecomp_core.kernels import ScaledSignLinear
from onecomp_onebit import Onebit

STORIES = Path(__file__).resolve().parents[4] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="stories260K is not available")
IDS = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])


def _runner(method) -> Runner:
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=32, num_calibration_samples=8, batch_size=2
    )
    config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    return Runner(config, method, calibration, show_progress=False, save_dtype="float32")


def test_fine_tuned_onebit_saves_and_loads_to_the_same_logits(tmp_path):
    runner = _runner(Onebit(finetune_steps=4))
    results = runner.run()
    assert len(results) == 35 and all(r.finetuned for r in results.values())
    for name, result in results.items():  # the engine wrote the fine-tuned results back
        weight = runner.model.get_submodule(name).weight
        assert torch.equal(weight, result.dequantize().float())
    runner.save_quantized_model(tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    row = qc["layers"]["model.layers.0.mlp.down_proj"]  # 64 × 172
    assert row["effective_bits"] == pytest.approx(1 + 16 * (64 + 172) / (64 * 172), abs=1e-6)
    model, _ = load_quantized_model(tmp_path / "q", device_map="cpu")
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, ScaledSignLinear) and layer.signs.dtype == torch.uint8
    assert layer.signs.numel() == 64 * 172 // 8  # one bit per sign
    with torch.no_grad():
        loaded = model(input_ids=IDS).logits
        in_memory = runner.create_quantized_model()(input_ids=IDS).logits
        fake = runner.model(input_ids=IDS).logits
    assert torch.equal(loaded, in_memory)
    torch.testing.assert_close(loaded, fake, rtol=1e-3, atol=3e-2)


def test_zero_finetune_steps_is_layer_wise():
    method = Onebit(finetune_steps=0)
    needs = method.needs()
    assert needs.finetune is None and not needs.fp_stream and needs.inputs == "full"
    # (the engine's steps=0 path is covered by tests/engine/test_finetune.py)


@pytest.mark.skipif("autobit" not in list_quantizers(), reason="needs onecomp-autobit")
def test_onebit_as_an_autobit_candidate_in_a_mixed_plan(tmp_path):
    specs = [{"method": "onebit", "finetune_steps": 2}, {"method": "rtn", "wbits": 4}]
    quantizer = create_method(
        "autobit", quantizers=specs, target_bit=2.6, target_bit_is_effective=True
    )
    runner = _runner(quantizer)
    results = runner.run()
    assert {r.method for r in results.values()} == {"onebit", "rtn"}
    onebit = [r for r in results.values() if r.method == "onebit"]
    assert all(r.finetuned for r in onebit)  # the engine fine-tuned AutoBit's OneBit layers
    runner.save_quantized_model(tmp_path / "mixed")
    qc = json.loads((tmp_path / "mixed" / "config.json").read_text())["quantization_config"]
    assert {row["method"] for row in qc["layers"].values()} == {"onebit", "rtn"}
    model, _ = load_quantized_model(tmp_path / "mixed", device_map="cpu")
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=IDS).logits, runner.create_quantized_model()(input_ids=IDS).logits
        )
