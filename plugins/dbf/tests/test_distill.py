"""Model-level distillation of the DBF vectors against the full-precision model's logits."""

from __future__ import annotations

import copy

import torch
from torch import nn

from onecomp_core.contract import LayerJob, RunView
from onecomp_core.testing import tiny_model
from onecomp_dbf import DBF
from onecomp_dbf.distill import TeacherRecorder, distill_model, kl_loss


def test_kl_loss_is_zero_for_equal_logits_and_respects_the_mask():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    assert kl_loss(t, t).item() < 1e-6
    s = t.clone()
    s[1] += torch.randn(5, 11)
    assert kl_loss(s, t).item() > 0.01
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert kl_loss(s, t, mask).item() < 1e-6  # the only differing sequence is masked out


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}


def _quantized_tiny_model(q: DBF):
    """A full-precision teacher, and a copy quantized layer by layer (weights written back)."""
    teacher_model = tiny_model("llama", seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 16), generator=gen), None) for _ in range(4)]
    model = copy.deepcopy(teacher_model)
    layers = _layers(model)
    results = {}
    for name, module in layers.items():
        results[name] = q.quantize(LayerJob(name, module))
        module.weight.data = results[name].dequantize().float()
    return teacher_model, model, layers, results, batches


def _kl(model, batches, teacher) -> float:
    with torch.no_grad():
        return sum(
            kl_loss(model(input_ids=ids).logits, teacher.logits(i)).item()
            for i, (ids, _) in enumerate(batches)
        )


def _write_back(layers, results) -> None:
    for name, result in results.items():
        layers[name].weight.data = result.dequantize().float()


def test_teacher_records_the_head_inputs_of_every_batch():
    fp, model, _, _, batches = _quantized_tiny_model(DBF(target_bits=1.0, iters=5))
    teacher = TeacherRecorder()
    assert teacher.record(fp, batches)
    assert len(teacher.hidden) == len(batches) and teacher.hidden[0].shape == (2, 16, 32)
    # the recorded teacher is the full-precision model, not the quantized one
    assert _kl(model, batches, teacher) > 1e-3


def test_distillation_lowers_kl_and_returns_new_results():
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    fp, model, layers, results, batches = _quantized_tiny_model(q)
    teacher = TeacherRecorder()
    teacher.record(fp, batches)
    weights = {n: m.weight.data.clone() for n, m in layers.items()}
    before = _kl(model, batches, teacher)
    new, losses = distill_model(model, layers, results, batches, teacher, 40, 1e-2, 0.1, seed=0)
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
    assert _kl(model, batches, teacher) < 0.8 * before


def test_prepare_records_the_teacher_and_on_model_done_distils_with_it():
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, distill_steps=30, distill_lr=2e-2)
    fp, model, layers, results, batches = _quantized_tiny_model(q)
    assert q.needs().model_pass
    q.prepare(RunView(model=fp, layers=_layers(fp), batches=batches))
    assert q.needs().model_pass and q._teacher is not None
    teacher = q._teacher
    before = _kl(model, batches, teacher)
    new = q.on_model_done(RunView(model=model, layers=layers, batches=batches, results=results))
    assert q._teacher is None  # released after use
    assert set(new) == set(results) and all(r.finetuned for r in new.values())
    _write_back(layers, new)
    assert _kl(model, batches, teacher) < 0.8 * before


def test_no_distillation_without_steps_or_head():
    q = DBF(finetune_steps=0)
    fp = tiny_model("llama", seed=0)
    q.prepare(RunView(model=fp, layers=_layers(fp), batches=[(torch.ones(1, 4).long(), None)]))
    assert q._teacher is None and not q.needs().model_pass
    headless = DBF(distill_steps=3)
    body = tiny_model("llama", seed=0).model  # no output head
    headless.prepare(RunView(model=body, layers={}, batches=[(torch.ones(1, 4).long(), None)]))
    assert not headless.needs().model_pass  # asked again after prepare: nothing to distil
    assert headless.on_model_done(RunView(model=body, layers={})) == {}
