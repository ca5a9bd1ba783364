"""MDBF through the engine (the seed ``Runner``): quantize → save → load gives the same logits."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model
from onecomp_mdbf import MDBF, MultipathMDBFLinear


def _runner(method, stories_path, calib_path) -> Runner:
    calibration = CalibrationConfig(
        dataset=str(calib_path), max_length=32, num_calibration_samples=4, batch_size=2
    )
    config = ModelConfig(path=stories_path, dtype="float32", device="cpu")
    return Runner(config, method, calibration, show_progress=False, save_dtype="float32")


def test_save_load_logits_equal_and_bits_are_the_formula(
    stories_path, calib_path, tmp_path, caplog
):
    method = MDBF(target_bits=1.5, l=2, P=2, admm_outer_iters=3, finetune_steps=2, distill_steps=2)
    runner = _runner(method, stories_path, calib_path)
    with caplog.at_level(logging.INFO, logger="onecomp_core.kernels.distill"):
        results = runner.run()
    kl = [r.args for r in caplog.records if r.msg.startswith("model distillation KL %")]
    assert len(kl) == 1 and kl[0][1] < kl[0][0]  # the streamed distillation lowered the KL
    assert len(results) == 35 and all(
        r.is_quantized and r.activation_aware for r in results.values()
    )
    runner.save_quantized_model(tmp_path / "q")
    model, _ = load_quantized_model(tmp_path / "q", device_map="cpu")
    rows = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["layers"]
    for name, row in rows.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, MultipathMDBFLinear)
        p, m = row["out_features"], row["in_features"]
        assert row["effective_bits"] == pytest.approx(method.bits_for((p, m), name), abs=1e-5)
        stored = sum(
            t.numel() * t.element_size() * 8 for t in layer.buffers() if t is not layer.bias
        )
        assert stored / (p * m) == pytest.approx(row["effective_bits"], rel=0.01)
    ids = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])
    with torch.no_grad():
        loaded = model(input_ids=ids).logits
        packed_in_memory = runner.create_quantized_model()(input_ids=ids).logits
    assert torch.equal(loaded, packed_in_memory)
