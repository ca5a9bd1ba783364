"""The model-level distillation's loss at the model's end: in pieces (sequences, or token
spans of one sequence), one end a batch for every piece of both sides."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.engine.model_walk import Walk
from onecomp_core.kernels import distill, end_kl, kl_sum
from onecomp_core.kernels.distill import logit_pieces
from onecomp_core.testing import tiny_model


class _CountingEnds(Walk):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, "cpu")
        self.ends: list[int] = []

    def end(self, finals, batches):
        self.ends.append(len(finals))
        return super().end(finals, batches)


@pytest.mark.parametrize(
    ("elements", "ends"),
    [(2 * 8, [4]), (3, [2 * 4 * 3])],  # two sequences a piece; spans of 3 tokens (3, 3, 2)
)
def test_pieces_give_the_whole_batch_kl_and_gradient_with_one_end_a_batch(
    monkeypatch, elements, ends
):
    model = tiny_model("llama", seed=0).eval()
    walk = _CountingEnds(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 8), generator=gen)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, :3] = 0
    hidden, kwargs = walk.start([(ids, mask)])
    teacher = walk.run(hidden, kwargs)[0]  # the model's own last-block output
    final = teacher + 0.3 * torch.randn(teacher.shape, generator=gen)  # a student's
    vocab = model.config.vocab_size
    monkeypatch.setattr(distill, "LOGIT_ELEMENTS", elements * vocab)
    grad = torch.zeros_like(final)
    got = end_kl(walk, final, teacher, (ids, mask), vocab, grad)
    assert walk.ends == ends  # one end for every piece of the teacher and the student

    x = final.clone().requires_grad_()
    with torch.no_grad():
        reference = next(walk.end([teacher], [(ids, mask)]))
    loss = kl_sum(next(walk.end([x], [(ids, mask)])), reference, mask) / mask.sum()
    loss.backward()
    torch.testing.assert_close(torch.tensor(got), loss.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-7)
    assert end_kl(walk, final, teacher, (ids, mask), vocab) == got  # no gradient asked: same loss


def test_logit_pieces_cover_the_batch_once():
    for shape, vocab, limit in [((4, 8), 10, 160), ((3, 10), 10, 40), ((2, 5), 1000, 10)]:
        covered = torch.zeros(shape, dtype=torch.long)
        original = distill.LOGIT_ELEMENTS
        try:
            distill.LOGIT_ELEMENTS = limit
            pieces = logit_pieces(torch.Size(shape), vocab)
        finally:
            distill.LOGIT_ELEMENTS = original
        for rows, cols in pieces:
            covered[rows, cols] += 1
            assert covered[rows, cols].numel() * vocab <= max(limit, vocab)
        assert (covered == 1).all()
