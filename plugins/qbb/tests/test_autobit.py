"""QBB as an AutoBit candidate: a mixed plan saves, loads back without AutoBit, and agrees."""

from __future__ import annotations

import json

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


@pytest.mark.skipif("autobit" not in list_quantizers(), reason="needs onecomp-autobit")
def test_qbb_and_rtn_layers_in_one_checkpoint(stories_path, calib_path, tmp_path):
    specs = [
        {"method": "qbb", "wbits": 2, "iters_per_basis": 3, "finetune_steps": 0},
        {"method": "rtn", "wbits": 4, "groupsize": 32},
    ]
    quantizer = create_method(
        "autobit", quantizers=specs, target_bit=3.6, target_bit_is_effective=True
    )
    calibration = CalibrationConfig(
        dataset=str(calib_path), num_calibration_samples=4, max_length=32
    )
    runner = Runner(
        ModelConfig(path=str(stories_path), dtype="float32", device="cpu"),
        quantizer,
        calibration,
        show_progress=False,
        save_dtype="float32",  # the loaded model's logits compared with the one in memory
    )
    results = runner.run()
    assert {r.method for r in results.values()} == {"qbb", "rtn"}
    out = runner.save_quantized_model(tmp_path / "mixed")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["method"] == "autobit"
    qbb = create_method("qbb", wbits=2)
    for name, row in qc["layers"].items():
        assert row["method"] == results[name].method
        if row["method"] == "qbb":  # the planner's cost is what the saved layer reports
            shape = (row["out_features"], row["in_features"])
            assert row["effective_bits"] == pytest.approx(qbb.bits_for(shape, name), abs=1e-5)
    loaded, _ = load_quantized_model(out, device_map="cpu")
    ids = torch.tensor([[1, 100, 200, 300, 400, 17, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, runner.create_quantized_model()(ids).logits)
