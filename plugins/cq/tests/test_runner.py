"""CQ through the engine: quantize stories260K → save → load gives the same logits."""

from __future__ import annotations

import json

import torch

from onecomp_core import load_quantized_model
from onecomp_cq import CQ, ClusterLinear

IDS = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])


def test_save_load_logits_equal(make_runner, tmp_path):
    runner = make_runner(CQ(finetune_steps=3, code_rounds=1))
    results = runner.run()
    assert len(results) == 35 and {r.weighting for r in results.values()} == {"full"}
    assert any(r.finetuned for r in results.values())  # block fine-tuning ran and was kept
    out = runner.save_quantized_model(tmp_path / "q")
    rows = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    for row in rows.values():
        assert row["effective_bits"] == round(
            CQ().bits_for((row["out_features"], row["in_features"])), 6
        )
    model, _ = load_quantized_model(out, device_map="cpu")
    assert isinstance(model.get_submodule("model.layers.4.mlp.down_proj"), ClusterLinear)
    with torch.no_grad():
        loaded = model(input_ids=IDS).logits
        packed = runner.create_quantized_model()(input_ids=IDS).logits
        fake = runner.model(input_ids=IDS).logits
    assert torch.equal(loaded, packed)
    torch.testing.assert_close(loaded, fake, rtol=1e-3, atol=1e-3)
