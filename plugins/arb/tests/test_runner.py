"""ARB through the engine: save → load logits, and ARB as an AutoBit candidate in a mixed plan."""

from __future__ import annotations

import json

import pytest
import torch

from onecomp_arb import ARB
from onecomp_core import create_method, list_quantizers, load_quantized_model

IDS = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])


def test_save_load_logits_equal(make_runner, tmp_path):
    runner = make_runner(ARB(finetune_steps=3, arb_iters=3, sign_rounds=1))
    results = runner.run()
    assert len(results) == 35 and {r.variant for r in results.values()} == {"rc"}
    assert any(r.finetuned for r in results.values())  # block fine-tuning ran and was kept
    out = runner.save_quantized_model(tmp_path / "q")
    rows = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    for row in rows.values():
        shape = (row["out_features"], row["in_features"])
        assert row["effective_bits"] == round(ARB().bits_for(shape), 6)
    model, _ = load_quantized_model(out, device_map="cpu")
    with torch.no_grad():
        loaded = model(input_ids=IDS).logits
        packed = runner.create_quantized_model()(input_ids=IDS).logits
        fake = runner.model(input_ids=IDS).logits
    assert torch.equal(loaded, packed)
    # the fake-quantized model holds the fp16-rounded products, the packed one the exact ones
    torch.testing.assert_close(loaded, fake, rtol=1e-2, atol=5e-2)


@pytest.mark.skipif("autobit" not in list_quantizers(), reason="needs onecomp-autobit")
def test_arb_as_an_autobit_candidate(make_runner, tmp_path):
    """A mixed plan of ARB (1 bit + scales) and 4-bit RTN at a 2.5-bit budget: both are used,
    the plan's bits come from ``bits_for``, and the saved folder loads to the same logits."""
    specs = [
        {"method": "arb", "variant": "x", "finetune_steps": 0, "arb_iters": 3, "sign_rounds": 1},
        {"method": "rtn", "wbits": 4, "groupsize": -1},
    ]
    quantizer = create_method(
        "autobit", quantizers=specs, target_bit=2.5, target_bit_is_effective=True
    )
    runner = make_runner(quantizer)
    results = runner.run()
    assert {r.method for r in results.values()} == {"arb", "rtn"}
    out = runner.save_quantized_model(tmp_path / "mixed")
    rows = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    arb = ARB(variant="x")
    for row in rows.values():
        if row["method"] == "arb":
            shape = (row["out_features"], row["in_features"])
            assert row["effective_bits"] == round(arb.bits_for(shape), 6)
    sizes = [r["out_features"] * r["in_features"] for r in rows.values()]
    mean = sum(r["effective_bits"] * s for r, s in zip(rows.values(), sizes, strict=True))
    assert mean / sum(sizes) <= 2.5 + 1e-6
    model, _ = load_quantized_model(out, device_map="cpu")
    with torch.no_grad():
        loaded = model(input_ids=IDS).logits
        assert torch.equal(loaded, runner.create_quantized_model()(input_ids=IDS).logits)
