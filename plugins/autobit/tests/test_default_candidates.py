"""AutoBit's default candidates on the real stories260K layers: GPTQ bracketing the target."""

from __future__ import annotations

from transformers import AutoModelForCausalLM

from onecomp_core import create_method


def test_default_candidates_bracket_the_target_grouped_and_per_row(stories_path):
    # the 3-bit-g32 budget (3 + 19/32 effective bits): GPTQ 3/4/5 bit at group size 32 and
    # per row, no 2-bit candidate (2-bit layers lose in the quantized model although their
    # per-layer score says they pay: README, "Validation"); planning then scores these
    model = AutoModelForCausalLM.from_pretrained(stories_path)
    layers = {
        n: m
        for n, m in model.named_modules()
        if n.startswith("model.layers.") and hasattr(m, "in_features")
    }
    quantizer = create_method("autobit", target_bit=3.59375, target_bit_is_effective=True)
    kept = quantizer.choose_layers(layers)
    plan = quantizer.plan
    assert kept == layers and not plan.planned
    assert plan.default_groupsize == 32
    assert [(c.method, c.wbits, c.groupsize) for c in plan.candidates] == [
        ("gptq", b, g) for g in (32, -1) for b in (3, 4, 5)
    ]
    assert quantizer.to_dict()["default_groupsize"] == 32
    # a raw 2.5-bit target brackets 2..4 bits
    low = create_method("autobit", target_bit=2.5, auto_dbf=False)
    low.choose_layers(layers)
    assert sorted({c.wbits for c in low.plan.candidates}) == [2, 3, 4]
