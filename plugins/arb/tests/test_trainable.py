"""ARB's trainable twin: the same output as the saved layer, and the result it leaves."""

from __future__ import annotations

import pytest
import torch

from onecomp_arb import ARB


@pytest.mark.parametrize("variant", ["rc", "x"])
def test_twin_matches_the_layer_and_round_trips(make_result, variant):
    result, _ = make_result(9, 13, variant)
    linear = torch.nn.Linear(13, 9, bias=True)
    linear.bias.data = linear.bias.data.half().float()  # the saved layer keeps an fp16 bias
    method = ARB(variant=variant, finetune_sign_lr=0.05)
    twin = method.trainable_layer(result, linear)
    layer = method.inference_layer(result, linear)
    x = torch.randn(4, 13)
    torch.testing.assert_close(twin(x), layer(x), rtol=1e-5, atol=1e-5)
    back = twin.to_result()
    assert back.finetuned and back.variant == variant
    for field in ("signs", "alpha", "mu", "col_scale"):
        a, b = getattr(back, field), getattr(result, field)
        assert (a is None and b is None) or torch.equal(a, b)
    with torch.no_grad():
        twin.theta_row.mul_(0.5)
        twin.sign_latent[1, :2] *= -1
    moved = twin.to_result()
    assert not torch.equal(moved.alpha, result.alpha)
    assert not torch.equal(moved.signs, result.signs)
    torch.testing.assert_close(
        moved.dequantize().float(), twin.weight().detach(), atol=2e-3, rtol=1e-3
    )


def test_needs_follow_the_settings():
    assert ARB().needs().fine_tunes and ARB().needs().inputs == "full"
    assert ARB(variant="arb", finetune_steps=0).needs().calibration is False
    assert ARB(variant="arb").needs().inputs == "none"
