"""Block fine-tuning runs a batch in pieces of whole sequences: the same loss and gradient as
the whole batch, one piece's graph alive at a time, per-sequence kwargs sliced."""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.contract import BlockView
from onecomp_core.engine.finetune import batch_loss
from onecomp_core.kernels.pieces import batch_rows, sequence_pieces


class _MaskedBlock(nn.Module):
    """x + W·(x masked per sequence) + a shared per-position table."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x, mask=None, table=None):
        assert mask.shape[0] == x.shape[0]  # a per-sequence mask follows its sequences
        return x + torch.tanh(self.proj(x * mask)) + table


def _view(block: nn.Module) -> BlockView:
    torch.manual_seed(0)
    inputs = [torch.randn(6, 5, 8)]
    kwargs = [{"mask": (torch.rand(6, 5, 1) > 0.3).float(), "table": torch.randn(1, 5, 8)}]
    fp = [x + torch.randn_like(x) for x in inputs]
    return BlockView(0, "b", block, torch.device("cpu"), inputs, kwargs, {}, {}, fp)


def _gradient(view: BlockView, tokens: int) -> tuple[float, torch.Tensor]:
    view.block.zero_grad(set_to_none=True)
    loss = batch_loss(view, 0, tokens, scale=0.5)
    return loss, view.block.proj.weight.grad.clone()


def test_pieces_give_the_whole_batch_loss_and_gradient():
    view = _view(_MaskedBlock())
    whole_loss, whole_grad = _gradient(view, tokens=10_000)
    out = view.run(0)
    target = view.fp_outputs[0]
    expected = ((out - target).pow(2).mean() / target.pow(2).mean()).item()
    assert abs(whole_loss - expected) < 1e-6 * expected
    for tokens in (5, 10, 12):  # one, two and two sequences a piece (6 rows of 5 tokens)
        loss, grad = _gradient(view, tokens)
        assert abs(loss - whole_loss) < 1e-5 * whole_loss
        torch.testing.assert_close(grad, whole_grad, rtol=1e-5, atol=1e-7)


def test_each_piece_is_backpropagated_before_the_next_runs():
    view = _view(_MaskedBlock())
    events: list[str] = []
    view.block.register_forward_hook(lambda *_: events.append("forward"))
    view.block.proj.weight.register_hook(lambda g: events.append("backward"))
    batch_loss(view, 0, tokens=10, scale=1.0)
    assert events == ["forward", "backward"] * 3


def test_pieces_are_whole_sequences_and_shared_kwargs_stay_whole():
    hidden = torch.zeros(6, 5, 8)
    assert sequence_pieces(hidden, 12) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert sequence_pieces(hidden, 3) == [slice(i, i + 1) for i in range(6)]  # never below one
    assert sequence_pieces(hidden, 1000) == [slice(0, 6)]
    mask, table, positions = torch.rand(6, 1, 5, 5), torch.rand(1, 5, 8), torch.arange(5)
    kwargs = {"mask": mask, "rope": (table, table), "cache_position": positions, "flag": True}
    piece = batch_rows(kwargs, slice(2, 4), 6)
    assert torch.equal(piece["mask"], mask[2:4])
    assert piece["rope"][0] is table and piece["cache_position"] is positions and piece["flag"]
