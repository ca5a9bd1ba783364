"""AutoBit's default candidates on the real stories260K model: GPTQ bracketing the target."""

from __future__ import annotations

from onecomp_core import create_method


def test_default_candidates_bracket_the_target_and_mix_groupings(make_runner):
    # the 3-bit-g32 budget (3 + 19/32 effective bits): GPTQ 3/4/5 bit at group size 32 and
    # per row; no 2-bit candidate, so no layer gets 2 bits (they lose in the quantized
    # model although their per-layer score says they pay: README, "Validation")
    quantizer = create_method("autobit", target_bit=3.59375, target_bit_is_effective=True)
    runner = make_runner(quantizer, samples=4, length=32)
    runner.run()
    plan = quantizer.plan
    assert plan.default_groupsize == 32
    assert [(c.method, c.wbits, c.groupsize) for c in plan.candidates] == [
        ("gptq", b, g) for g in (32, -1) for b in (3, 4, 5)
    ]
    bits = {r["layer"]: r["bits"] for r in plan.rows}
    assert plan.achieved_bits <= 3.59375 + 1e-12
    assert {runner.results[n].bits for n in bits} >= {3, 4}  # a real mix
    assert min(runner.results[n].bits for n in bits) == 3
    groupings = {runner.results[n].groupsize for n in bits}
    assert -1 in groupings  # per row is chosen where it pays (its 19/64 bits of metadata)
    assert quantizer.to_dict()["default_groupsize"] == 32
