"""A real decoder block run and backpropagated a few sequences at a time gives the whole
batch's output and gradients (HF Llama kwargs: a padding mask, rotary tables)."""

from __future__ import annotations

import torch

from onecomp_core.contract import ModelWalk
from onecomp_core.engine.model_walk import Walk
from onecomp_core.kernels import backward_in_pieces, run_in_pieces
from onecomp_core.testing import tiny_model


def _batch():
    model = tiny_model("llama", seed=0).eval()
    walk = Walk(model, "cpu")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (5, 8), generator=gen)
    mask = torch.ones(5, 8, dtype=torch.long)
    mask[2, :3] = 0  # left padding in one sequence: a per-sequence mask
    hidden, kwargs = walk.start([(ids, mask)])
    return walk, hidden[0], ModelWalk.detached(kwargs[0])


def test_run_in_pieces_is_the_whole_batch_output():
    walk, x, kwargs = _batch()
    with walk.block(0) as block, torch.no_grad():
        whole = ModelWalk.run(block, x, kwargs)
        for tokens in (8, 16, 24):  # one, two and three sequences a piece
            torch.testing.assert_close(run_in_pieces(block, x, kwargs, tokens), whole)


def test_backward_in_pieces_gives_the_whole_batch_gradients():
    walk, x, kwargs = _batch()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with walk.block(0) as block:
        weight = block.mlp.down_proj.weight
        weight.requires_grad_(True)
        leaf = x.clone().requires_grad_()
        ModelWalk.run(block, leaf, kwargs).backward(grad_out)
        expected_input, expected_weight = leaf.grad, weight.grad.clone()
        for tokens in (8, 24):
            weight.grad = None
            got = backward_in_pieces(block, x, kwargs, grad_out, True, tokens)
            torch.testing.assert_close(got, expected_input, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(weight.grad, expected_weight, rtol=1e-5, atol=1e-6)
        weight.grad = None
        assert backward_in_pieces(block, x, kwargs, grad_out, False, 8) is None
        assert weight.grad is not None  # the parameters still get their gradient
