"""The fine-tuning twin of an MDBF layer: same output as the inference layer, result round trip."""

from __future__ import annotations

import torch

from onecomp_mdbf import MDBF


def test_twin_matches_the_inference_layer_and_round_trips():
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(12, 7, bias=True)
    linear.weight.data.copy_(torch.randn(7, 12, generator=g))
    method = MDBF(target_bits=1.5, l=2, P=2, admm_outer_iters=4, activation_aware=False)
    result = method.quantize_layer(linear)
    twin = method.trainable_layer(result, linear)
    x = torch.randn(3, 12, generator=g)
    layer = method.inference_layer(result, linear)
    torch.testing.assert_close(twin(x), layer(x), rtol=1e-3, atol=1e-3)
    again = twin.to_result()
    torch.testing.assert_close(
        again.dequantize().float(), result.dequantize().float(), rtol=2e-3, atol=2e-3
    )
    assert torch.equal(again.sign_a, result.sign_a) and again.finetuned
    assert [grp["lr"] for grp in twin.param_groups(0.01)] == [0.01, method.finetune_sign_lr]
    # a gradient reaches the envelopes and the sign latents
    twin(x).sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in twin.thetas.values())
    assert twin.sign_a.grad is not None and twin.sign_a.grad.abs().sum() > 0
