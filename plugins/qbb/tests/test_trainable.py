"""The fine-tuning twin of a QBB layer: same output as the inference layer, its result round trip."""

from __future__ import annotations

import pytest
import torch

from onecomp_qbb import QBB
from onecomp_qbb.trainable import QBBTwin, straight_through


def _result(p=6, m=11, n=3):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(p, m, generator=g)
    linear = torch.nn.Linear(m, p, bias=True)
    linear.weight.data.copy_(w)
    method = QBB(wbits=n, weighting="none", iters_per_basis=5)
    return method, method.quantize_layer(linear), linear


def test_twin_matches_the_inference_layer_and_round_trips():
    method, result, linear = _result()
    twin = method.trainable_layer(result, linear)
    layer = method.inference_layer(result, linear)
    x = torch.randn(4, 11)
    torch.testing.assert_close(twin(x), layer(x), rtol=1e-3, atol=1e-3)
    again = twin.to_result()
    assert torch.equal(again.signs, result.signs) and torch.equal(again.alphas, result.alphas)
    assert again.finetuned and not result.finetuned


@pytest.mark.parametrize("kind", ["clipped", "identity", "tanh"])
def test_every_straight_through_kind_passes_a_gradient_to_the_signs(kind):
    """Reference defect: its "identity" STE was a plain sign, so the latents got no gradient."""
    latent = torch.tensor([0.5, -0.3, 0.9], requires_grad=True)
    out = straight_through(latent, kind)
    assert out.tolist() == [1.0, -1.0, 1.0]
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert (latent.grad != 0).all()


def test_trained_sign_latents_flip_and_are_repacked():
    method, result, linear = _result()
    twin = QBBTwin(result, linear.bias, sign_lr=1.0)
    with torch.no_grad():
        twin.latent[0, 0, 0] = -twin.latent[0, 0, 0]  # as if training had flipped it
    flipped = twin.to_result().unpacked_signs()
    assert flipped[0, 0, 0] == -result.unpacked_signs()[0, 0, 0]
    assert torch.equal(flipped[1:], result.unpacked_signs()[1:])
    groups = twin.param_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, 1.0]
