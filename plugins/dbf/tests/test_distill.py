"""Model-level distillation of the DBF vectors, streamed through the blocks."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from onecomp_core.contract import RunView
from onecomp_core.engine.model_walk import Walk
from onecomp_core.kernels import distill as kernel_distill
from onecomp_core.kernels import swapped_in
from onecomp_core.testing import linear_layers, quantize_layers, tiny_model
from onecomp_dbf import DBF
from onecomp_dbf.distill import Teacher, _Distillation, distill_model, kl_loss
from onecomp_dbf.trainable import TrainableDBF, trainable_twins


def test_kl_loss_is_zero_for_equal_logits_and_respects_the_mask():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    assert kl_loss(t, t).item() < 1e-6
    s = t.clone()
    s[1] += torch.randn(5, 11)
    assert kl_loss(s, t).item() > 0.01
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert kl_loss(s, t, mask).item() < 1e-6  # the only differing sequence is masked out


class CountingWalk(Walk):
    """The engine's walk, counting how many blocks are in use at once."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, "cpu")
        self.in_use = self.most = self.visits = 0

    @contextmanager
    def block(self, index: int, skip=()):
        self.in_use += 1
        self.visits += 1
        self.most = max(self.most, self.in_use)
        try:
            with super().block(index, skip) as block:
                yield block
        finally:
            self.in_use -= 1


def _setup(q: DBF, mask: bool = False):
    """A full-precision teacher model, a copy quantized layer by layer, the fp stream's end."""
    fp = tiny_model("llama", seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 16), generator=gen), None) for _ in range(4)]
    if mask:
        m = torch.ones(2, 16, dtype=torch.long)
        m[0, :4] = 0
        batches[1] = (batches[1][0], m)
    model = copy.deepcopy(fp)
    layers = linear_layers(model)
    results = quantize_layers(q, layers)
    walk = Walk(fp, "cpu")
    hidden, kwargs = walk.start(batches)
    teacher = Teacher(walk.run(hidden, kwargs))
    with torch.no_grad():
        logits = [fp(input_ids=i, attention_mask=m).logits for i, m in batches]
    return model, layers, results, batches, teacher, logits


def _kl(model, batches, logits) -> float:
    with torch.no_grad():
        return sum(
            kl_loss(model(input_ids=ids, attention_mask=m).logits, t, m).item()
            for (ids, m), t in zip(batches, logits, strict=True)
        )


def _write_back(layers, results) -> None:
    for name, result in results.items():
        layers[name].weight.data = result.dequantize().float()


def test_teacher_is_the_full_precision_model():
    model, _, _, batches, teacher, logits = _setup(DBF(target_bits=1.0, iters=5))
    assert len(teacher.hidden) == len(batches) and teacher.hidden[0].shape == (2, 16, 32)
    walk = Walk(model, "cpu")  # the fp stream through the model's end is the fp model
    got = list(walk.end(teacher.hidden, batches))
    for a, b in zip(got, logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert _kl(model, batches, logits) > 1e-3  # the quantized model differs


def test_streamed_distillation_lowers_kl_one_block_at_a_time():
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    model, layers, results, batches, teacher, logits = _setup(q, mask=True)
    weights = {n: m.weight.data.clone() for n, m in layers.items()}
    before = _kl(model, batches, logits)
    walk = CountingWalk(model)
    new, losses = distill_model(walk, layers, results, batches, teacher, 40, 1e-2, 0.1, seed=0)
    assert walk.most == 1 and walk.visits >= 40 * 2 * 2  # forward and backward, per block
    assert losses["after"] < losses["before"]
    assert set(new) == set(results)
    flipped = 0
    for name, module in layers.items():
        assert type(module) is nn.Linear and model.get_submodule(name) is module
        assert torch.equal(module.weight.data, weights[name])  # the model is left as it was
        assert module.weight.requires_grad and not results[name].finetuned
        assert new[name].finetuned and not torch.equal(new[name].dbf_Da, results[name].dbf_Da)
        s_a, s_b = new[name].signs()
        old_a, old_b = results[name].signs()
        flipped += int((s_a != old_a).sum() + (s_b != old_b).sum())
    assert flipped > 0  # sign_lr > 0 trains the signs too
    _write_back(layers, new)
    assert _kl(model, batches, logits) < 0.8 * before


@pytest.mark.parametrize("chunked", [False, True])
def test_streamed_backward_gives_the_whole_model_gradient(chunked, monkeypatch):
    """Backward block by block, recomputing each block, equals the whole model's backward
    (also with the model's end applied one sequence at a time)."""
    if chunked:
        monkeypatch.setattr(kernel_distill, "LOGIT_ELEMENTS", 16 * 128)
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    model, layers, results, batches, teacher, logits = _setup(q, mask=True)
    run = _Distillation(Walk(model, "cpu"), layers, results, batches, teacher, 0, 1, 1e-2, 0.1)
    run.step(1, update=False)
    twins = trainable_twins(results, layers, torch.device("cpu"), True)
    ids, mask = batches[1]
    with swapped_in(model, layers, twins), torch.enable_grad():
        kl_loss(model(input_ids=ids, attention_mask=mask).logits, logits[1], mask).backward()
    for name, twin in twins.items():
        streamed = run.twins[name]
        for key in ("theta_a", "theta_c", "theta_b", "sign_a_t", "sign_b_t"):
            want = getattr(twin, key).grad
            got = getattr(streamed, key).grad
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * want.abs().max())


def test_block_local_variant_trains_only_the_last_blocks():
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    model, layers, results, batches, teacher, logits = _setup(q)
    before = _kl(model, batches, logits)
    walk = CountingWalk(model)
    new, losses = distill_model(
        walk, layers, results, batches, teacher, 40, 1e-2, 0.1, seed=0, last_blocks=1
    )
    assert set(new) == {n for n in results if n.startswith("model.layers.1.")}
    assert losses["after"] < losses["before"]
    _write_back(layers, new)
    assert _kl(model, batches, logits) < before


def test_hooks_keep_the_last_blocks_fp_stream_and_distil_with_it():
    q = DBF(
        target_bits=1.0, iters=5, finetune_steps=0, distill_steps=30, distill_lr=2e-2,
        distill_data="calibration",
    )  # fmt: skip
    model, layers, results, batches, teacher, logits = _setup(q)
    walk = Walk(model, "cpu")
    assert q.needs().model_pass and q.needs().fp_stream
    q.prepare(RunView(model=model, layers=layers, batches=batches, walk=walk))
    assert q.needs().model_pass and q._teacher is None
    view = type("View", (), {"index": 1, "fp_outputs": teacher.hidden})()
    q._keep_teacher(view)
    assert q._teacher is not None
    before = _kl(model, batches, logits)
    run = RunView(model=model, layers=layers, batches=batches, results=results, walk=walk)
    new = q.on_model_done(run)
    assert q._teacher is None  # released after use
    assert set(new) == set(results) and all(r.finetuned for r in new.values())
    _write_back(layers, new)
    assert _kl(model, batches, logits) < 0.8 * before


def test_no_distillation_without_steps_or_head():
    q = DBF(finetune_steps=0)
    fp = tiny_model("llama", seed=0)
    one = [(torch.ones(1, 4).long(), None)]
    q.prepare(RunView(model=fp, layers=linear_layers(fp), batches=one, walk=Walk(fp, "cpu")))
    assert q._teacher is None and not q.needs().model_pass and not q.needs().fp_stream
    headless = DBF(distill_steps=3)
    body = tiny_model("llama", seed=0).model  # no output head
    headless.prepare(RunView(model=body, layers={}, batches=one, walk=Walk(body, "cpu")))
    assert not headless.needs().model_pass  # asked again after prepare: nothing to distil
    assert headless.on_model_done(RunView(model=body, layers={})) == {}


@pytest.mark.parametrize("sign_lr", [0.0, 0.1])
def test_trainable_state_is_parked_between_uses(sign_lr):
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    _, layers, results, _, _, _ = _setup(q)
    twin = trainable_twins(results, layers, torch.device("cpu"), sign_lr > 0)[
        "model.layers.0.mlp.up_proj"
    ]
    weight = twin.weight_t().detach().clone()
    twin.park("cpu")
    kept = ("sign_a_t", "sign_b_t") if sign_lr else ("sign_a", "sign_b")
    assert all((getattr(twin, key) is None) == (sign_lr == 0) for key in kept)  # fixed: dropped
    twin.unpark("cpu")
    assert torch.equal(twin.weight_t().detach(), weight)


def test_fixed_signs_are_unpacked_one_block_at_a_time(monkeypatch):
    """Fixed signs are 1 byte each unpacked: every block's at once would grow with depth."""
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    model, layers, results, batches, teacher, _ = _setup(q)
    block_of = {id(r): n.split(".")[2] for n, r in results.items()}
    twins: list[TrainableDBF] = []
    most = [0]
    unpack = TrainableDBF._unpack_fixed

    def counting_unpack(self, device):
        unpack(self, device)
        if all(t is not self for t in twins):
            twins.append(self)
        held = {block_of[id(t.result)] for t in twins if t.sign_a is not None}
        most[0] = max(most[0], len(held))

    monkeypatch.setattr(TrainableDBF, "_unpack_fixed", counting_unpack)
    walk = Walk(model, "cpu")
    new, _ = distill_model(walk, layers, results, batches, teacher, 4, 1e-2, 0.0, seed=0)
    assert len({block_of[id(t.result)] for t in twins}) == len(walk) > 1 and most[0] == 1
    assert all(t.sign_a is None for t in twins)  # parked again: nothing left unpacked
    assert set(new) == set(results) and all(r.finetuned for r in new.values())
    for name, result in new.items():  # the fixed signs went through untouched
        assert torch.equal(result.dbf_A, results[name].dbf_A)
        assert torch.equal(result.dbf_B, results[name].dbf_B)
