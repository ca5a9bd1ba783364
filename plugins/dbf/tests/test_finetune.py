"""Block fine-tuning: lowers the block error, returns new results, leaves the block as it was."""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.contract import BlockView, LayerJob
from onecomp_dbf import DBF
from onecomp_dbf.finetune import finetune_block


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 40)
        self.down = nn.Linear(40, 16)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return x + scale * self.down(torch.relu(self.up(x)))


def _quantized_block(q: DBF, scale: float, seed: int, with_stats: bool):
    """Block 0 as the engine hands it over: weights written back, fp outputs kept."""
    torch.manual_seed(seed)
    block = _Block()
    inputs = [torch.randn(4, 32, 16) for _ in range(6)]
    kwargs = [{"scale": scale} for _ in inputs]
    with torch.no_grad():
        fp_outputs = [block(x, **kw) for x, kw in zip(inputs, kwargs, strict=True)]
    layers = {"b.up": block.up, "b.down": block.down}
    results = {}
    for name, module in layers.items():
        stats = None
        if with_stats and name == "b.up":
            stats = 2 * torch.cat(inputs).reshape(-1, 16).pow(2).mean(0)
        results[name] = q.quantize(LayerJob(name, module, hessian=stats))
        module.weight.data = results[name].dequantize().float()  # the engine's write-back
    view = BlockView(
        index=0,
        name="b",
        block=block,
        device=torch.device("cpu"),
        inputs=inputs,
        kwargs=kwargs,
        layers=layers,
        results=dict(results),
        fp_inputs=inputs,
        fp_outputs=fp_outputs,
    )
    return view, results


def _block_error(view: BlockView) -> float:
    with torch.no_grad():
        return sum((view.run(i) - y).pow(2).sum().item() for i, y in enumerate(view.fp_outputs))


def _write_back(view: BlockView, results) -> None:
    for name, result in results.items():
        view.layers[name].weight.data = result.dequantize().float()


def test_finetune_lowers_block_error_and_returns_new_results():
    q = DBF(target_bits=1.0, iters=10, finetune_steps=60)
    view, fitted = _quantized_block(q, scale=0.5, seed=0, with_stats=True)
    weights = {n: m.weight.data.clone() for n, m in view.layers.items()}
    before = _block_error(view)
    new, losses = finetune_block(view, steps=60, lr=1e-2, seed=0)
    assert losses["after"] < losses["before"]
    assert set(new) == {"b.up", "b.down"}
    for name, module in view.layers.items():
        assert torch.equal(module.weight.data, weights[name])  # the hook writes nothing back
        assert view.results[name] is fitted[name] and not fitted[name].finetuned
        assert new[name].finetuned and not torch.equal(new[name].dbf_Da, fitted[name].dbf_Da)
        assert module.weight.requires_grad and type(module) is nn.Linear
    assert view.block.up is view.layers["b.up"]
    _write_back(view, new)
    assert _block_error(view) < 0.9 * before


def test_on_block_done_is_the_fine_tuning_and_off_without_steps():
    q = DBF(target_bits=1.0, iters=10, finetune_steps=20)
    view, _ = _quantized_block(q, scale=0.5, seed=0, with_stats=True)
    assert set(q.on_block_done(view)) == {"b.up", "b.down"}
    assert DBF(finetune_steps=0).on_block_done(view) == {}


def test_sign_training_flips_signs_and_repacks_them():
    """With a sign learning rate the straight-through latents may flip signs."""
    q = DBF(target_bits=1.0, iters=5, finetune_steps=40, flag_hessian=False)
    view, fitted = _quantized_block(q, scale=1.0, seed=1, with_stats=False)
    new, losses = finetune_block(view, steps=40, lr=1e-2, seed=0, sign_lr=0.05)
    assert losses["after"] < losses["before"]
    flipped = 0
    for name in view.layers:
        s_a, s_b = new[name].signs()
        old_a, old_b = fitted[name].signs()
        assert set(s_a.unique().tolist()) <= {-1.0, 1.0}
        flipped += int((s_a != old_a).sum() + (s_b != old_b).sum())
    assert flipped > 0
    assert view.block.up is view.layers["b.up"]


def test_no_improvement_changes_nothing():
    q = DBF(target_bits=1.0, iters=10, finetune_steps=5)
    view, _ = _quantized_block(q, scale=0.5, seed=0, with_stats=True)
    new, losses = finetune_block(view, steps=5, lr=0.0, seed=0)  # lr 0: the loss cannot fall
    assert new == {} and losses["after"] == losses["before"]
