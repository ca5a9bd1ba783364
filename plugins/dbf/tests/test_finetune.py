"""DBF under the engine's block fine-tuning: lowers the block error, returns new results,
leaves the block holding the kept results' weights."""

from __future__ import annotations

import torch
from torch import nn

from onecomp_core.contract import BlockView, FineTune, LayerJob, RunView
from onecomp_core.engine.finetune import finetune_block
from onecomp_dbf import DBF
from onecomp_dbf.trainable import TrainableDBF


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
        fp_outputs=fp_outputs,
    )
    return view, results


def _block_error(view: BlockView) -> float:
    with torch.no_grad():
        return sum((view.run(i) - y).pow(2).sum().item() for i, y in enumerate(view.fp_outputs))


def test_finetune_lowers_block_error_and_returns_new_results():
    q = DBF(target_bits=1.0, iters=10, finetune_steps=60)
    view, fitted = _quantized_block(q, scale=0.5, seed=0, with_stats=True)
    weights = {n: m.weight.data.clone() for n, m in view.layers.items()}
    before = _block_error(view)
    new, losses = finetune_block(q, view, FineTune(60, 1e-2, seed=0))
    assert losses["after"] < losses["before"]
    assert set(new) == {"b.up", "b.down"}
    for name, module in view.layers.items():
        # released while training, then the fine-tuned weights written back
        assert not torch.equal(module.weight.data, weights[name])
        assert torch.equal(module.weight.data, new[name].dequantize().float())
        assert view.results[name] is fitted[name] and not fitted[name].finetuned
        assert new[name].finetuned and not torch.equal(new[name].dbf_Da, fitted[name].dbf_Da)
        assert module.weight.requires_grad and type(module) is nn.Linear
    assert view.block.up is view.layers["b.up"]
    assert _block_error(view) < 0.9 * before


def test_needs_declare_the_engines_fine_tuning_and_none_without_steps():
    q = DBF(target_bits=1.0, iters=10, finetune_steps=20, finetune_lr=3e-3, seed=4)
    assert q.needs().finetune == FineTune(20, 3e-3, seed=4) and q.needs().fp_stream
    assert DBF(finetune_steps=0).needs().finetune is None
    view, _ = _quantized_block(q, scale=0.5, seed=0, with_stats=True)
    assert q.on_block_done(view) == {}  # the engine fine-tunes; the hook only keeps the teacher


def test_sign_training_flips_signs_and_repacks_them():
    """With a sign learning rate the straight-through latents may flip signs."""
    q = DBF(target_bits=1.0, iters=5, finetune_steps=40, flag_hessian=False, finetune_sign_lr=0.05)
    view, fitted = _quantized_block(q, scale=1.0, seed=1, with_stats=False)
    new, losses = finetune_block(q, view, FineTune(40, 1e-2, seed=0))
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
    # lr 1e-30: no vector moves in fp32, so the loss cannot fall
    weights = {n: m.weight.data.clone() for n, m in view.layers.items()}
    new, losses = finetune_block(q, view, FineTune(5, 1e-30, seed=0))
    assert new == {} and losses["after"] == losses["before"]
    for name, module in view.layers.items():  # released while training, layer-wise after
        assert torch.equal(module.weight.data, weights[name])


def test_one_weight_per_step_gives_the_batches_summed_gradient():
    """begin_step/end_step (Ŵᵀ built once per step) = the per-batch graphs' summed gradient."""
    q = DBF(target_bits=1.0, iters=5, finetune_steps=2, flag_hessian=False, finetune_sign_lr=0.05)
    view, fitted = _quantized_block(q, scale=1.0, seed=2, with_stats=False)
    twin = q.trainable_layer(fitted["b.up"], view.layers["b.up"])
    batches = [torch.randn(4, 32, 16) for _ in range(3)]

    def gradients(per_step: bool) -> list[torch.Tensor]:
        twin.zero_grad(set_to_none=True)
        if per_step:
            twin.begin_step()
        for x in batches:
            twin(x).pow(2).mean().backward()
        if per_step:
            twin.end_step()
        return [p.grad.clone() for p in twin.parameters()]

    per_batch, per_step = gradients(False), gradients(True)
    assert len(per_step) == 5  # three vectors and two sign latents
    for a, b in zip(per_batch, per_step, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    assert twin._step_weight is None  # nothing held after the step


def test_engine_calls_the_step_hooks_around_every_step(monkeypatch):
    """finetune_block builds one Ŵᵀ per optimizer step and per loss check, not per batch."""
    q = DBF(target_bits=1.0, iters=5, finetune_steps=3, flag_hessian=False)
    view, _ = _quantized_block(q, scale=1.0, seed=0, with_stats=False)
    builds = []
    original = TrainableDBF.begin_step

    def counting(self):
        builds.append(self)
        original(self)

    monkeypatch.setattr(TrainableDBF, "begin_step", counting)
    finetune_block(q, view, FineTune(3, 1e-2, tokens_per_step=256, seed=0))
    # (3 steps + the monitor's loss before and after) × 2 layers, though a step is two
    # batches of 4 × 32 tokens here and the monitor four
    assert len(builds) == (3 + 2) * 2


def test_fixed_signs_run_through_the_factors_with_the_dense_results(monkeypatch):
    """Without trainable signs and outside a step the twin never builds Ŵ: same outputs and
    vector gradients as the dense product, up to the order of the sums."""
    q = DBF(target_bits=1.5, iters=5, finetune_steps=2, flag_hessian=False, finetune_sign_lr=0)
    view, fitted = _quantized_block(q, scale=1.0, seed=3, with_stats=False)
    twin = q.trainable_layer(fitted["b.up"], view.layers["b.up"])
    assert not twin.train_signs
    x = torch.randn(4, 32, 16)
    built = []
    dense_weight = TrainableDBF.weight_t

    def counted(self):
        built.append(1)
        return dense_weight(self)

    monkeypatch.setattr(TrainableDBF, "weight_t", counted)
    factored = twin(x)
    assert not built  # no (n × m) matrix
    monkeypatch.undo()
    factored.pow(2).sum().backward()
    grads = [p.grad.clone() for p in twin.parameters()]
    twin.zero_grad(set_to_none=True)
    dense = x.float() @ twin.weight_t() + twin.bias
    dense.pow(2).sum().backward()
    torch.testing.assert_close(factored, dense, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, [p.grad for p in twin.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_block_over_the_sign_budget_trains_the_vectors_only(caplog):
    """``sign_state_mb`` bounds one block's sign training (16 B a sign, from the shapes in
    ``prepare``): above it the twins keep the fitted signs, with a one-line notice."""
    q = DBF(target_bits=1.5, iters=5, finetune_steps=20, flag_hessian=False, sign_state_mb=0.01)
    view, fitted = _quantized_block(q, scale=1.0, seed=3, with_stats=False)
    q.prepare(RunView(model=view.block, layers=view.layers))
    assert "training a block's signs would keep 0 MB (sign_state_mb=0); training the vectors" in (
        caplog.text
    )
    assert not q.trainable_layer(fitted["b.up"], view.layers["b.up"]).train_signs
    new, losses = finetune_block(q, view, q.needs().finetune)
    assert new and losses["after"] < losses["before"]
    for name, result in new.items():  # the vectors trained, the signs are the fitted ones
        assert torch.equal(result.dbf_A, fitted[name].dbf_A)
        assert torch.equal(result.dbf_B, fitted[name].dbf_B)
        assert not torch.equal(result.dbf_Da, fitted[name].dbf_Da)
    roomy = DBF(target_bits=1.5, iters=5, finetune_steps=20, flag_hessian=False)
    roomy.prepare(RunView(model=view.block, layers=view.layers))
    assert roomy.trainable_layer(fitted["b.up"], view.layers["b.up"]).train_signs
