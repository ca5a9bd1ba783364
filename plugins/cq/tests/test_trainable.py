"""CQ's trainable twin: the same output as the saved layer, and the result it leaves."""

from __future__ import annotations

import torch

from onecomp_cq import CQ


def test_twin_matches_the_layer_and_round_trips(make_result):
    result, dense = make_result(9, 13)
    linear = torch.nn.Linear(13, 9, bias=True)
    linear.bias.data = linear.bias.data.half().float()  # the saved layer keeps an fp16 bias
    method = CQ(finetune_sign_lr=0.05)
    twin = method.trainable_layer(result, linear)
    layer = method.inference_layer(result, linear)
    x = torch.randn(4, 13)
    torch.testing.assert_close(twin(x), layer(x), rtol=1e-5, atol=1e-5)
    back = twin.to_result()
    assert back.finetuned and not result.finetuned
    assert torch.equal(back.codes, result.codes)
    assert torch.equal(back.left_mean, result.left_mean)
    assert torch.equal(back.right_mean, result.right_mean)
    # a trained step moves the levels and (straight-through) may flip codes
    with torch.no_grad():
        twin.theta_row.mul_(1.5)
        twin.sign_latent[0, :3] *= -1
    moved = twin.to_result()
    assert not torch.equal(moved.right_mean, result.right_mean)
    assert not torch.equal(moved.codes, result.codes)
    torch.testing.assert_close(
        moved.dequantize().float(), twin.weight().detach(), atol=2e-3, rtol=1e-3
    )


def test_one_pair_per_matrix_is_not_trained(make_result):
    result, _ = make_result(4, 6, each_row=False)
    assert CQ(each_row=False).trainable_layer(result, torch.nn.Linear(6, 4)) is None


def test_needs_follow_the_settings():
    assert CQ().needs().fine_tunes and CQ().needs().inputs == "full"
    assert not CQ(finetune_steps=0).needs().fine_tunes
    assert CQ(weighting="none", finetune_steps=0).needs().calibration is False
    assert CQ(weighting="diag").needs().inputs == "diag"
