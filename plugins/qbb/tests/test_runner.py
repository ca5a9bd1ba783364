"""QBB through the engine (the seed ``Runner``): quantize → save → load gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model
from onecomp_qbb import QBB, BinaryBasesLinear


def _runner(method, stories_path, calib_path) -> Runner:
    calibration = CalibrationConfig(
        dataset=str(calib_path), max_length=32, num_calibration_samples=4, batch_size=2
    )
    config = ModelConfig(path=stories_path, dtype="float32", device="cpu")
    return Runner(config, method, calibration, show_progress=False, save_dtype="float32")


def test_save_load_logits_equal_and_bits_are_the_formula(stories_path, calib_path, tmp_path):
    method = QBB(wbits=3, iters_per_basis=3, finetune_steps=2)
    runner = _runner(method, stories_path, calib_path)
    results = runner.run()
    assert len(results) == 35 and all(r.weighting == "activation" for r in results.values())
    assert all(r.finetuned for r in results.values())
    runner.save_quantized_model(tmp_path / "q")
    model, _ = load_quantized_model(tmp_path / "q", device_map="cpu")
    rows = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["layers"]
    for name, row in rows.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, BinaryBasesLinear) and layer.bases == 3
        p, m = row["out_features"], row["in_features"]
        assert row["effective_bits"] == pytest.approx(method.bits_for((p, m), name), abs=1e-5)
        stored = sum(t.numel() * t.element_size() * 8 for t in (layer.signs, layer.alphas))
        assert stored / (p * m) == pytest.approx(row["effective_bits"], rel=0.01)
    ids = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])
    with torch.no_grad():
        loaded = model(input_ids=ids).logits
        packed_in_memory = runner.create_quantized_model()(input_ids=ids).logits
    assert torch.equal(loaded, packed_in_memory)
