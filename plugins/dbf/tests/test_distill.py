"""Model-level distillation of the DBF vectors against the full-precision model's logits."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from onecomp_core.calibration import CalibrationConfig
from onecomp_core.model_config import ModelConfig
from onecomp_core.runner import Runner
from onecomp_core.testing import tiny_model
from onecomp_dbf import DBF
from onecomp_dbf.distill import TeacherRecorder, distill_model, kl_loss

STORIES = Path(__file__).resolve().parents[4] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"


def test_kl_loss_is_zero_for_equal_logits_and_respects_the_mask():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    assert kl_loss(t, t).item() < 1e-6
    s = t.clone()
    s[1] += torch.randn(5, 11)
    assert kl_loss(s, t).item() > 0.01
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    assert kl_loss(s, t, mask).item() < 1e-6  # the only differing sequence is masked out


def _quantized_tiny_model():
    teacher_model = tiny_model("llama", seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 16), generator=gen), None) for _ in range(4)]
    teacher = TeacherRecorder()
    assert teacher.record(teacher_model, batches)
    model = copy.deepcopy(teacher_model)
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, flag_hessian=False)
    layers = q.setup(model)
    for name, module in layers.items():
        module.weight.data = q.quantize(module, name).compute_dequantized_weight().float()
    return model, layers, q, batches, teacher


def _kl(model, batches, teacher) -> float:
    with torch.no_grad():
        return sum(
            kl_loss(model(input_ids=ids).logits, teacher.logits(i)).item()
            for i, (ids, _) in enumerate(batches)
        )


def test_teacher_records_the_head_inputs_of_every_batch():
    model, layers, q, batches, teacher = _quantized_tiny_model()
    assert len(teacher.hidden) == len(batches) and teacher.hidden[0].shape == (2, 16, 32)
    # the recorded teacher is the full-precision model, not the quantized one
    assert _kl(model, batches, teacher) > 1e-3


def test_distillation_lowers_kl_and_updates_results_and_weights_in_place():
    model, layers, q, batches, teacher = _quantized_tiny_model()
    before = _kl(model, batches, teacher)
    old = {n: (r.dbf_Da.clone(), r.signs()) for n, r in q.results.items()}
    losses = distill_model(model, layers, q.results, batches, teacher, 40, 1e-2, 0.1, seed=0)
    assert losses["after"] < losses["before"]
    assert _kl(model, batches, teacher) < 0.8 * before
    flipped = 0
    for name, module in layers.items():
        result = q.results[name]
        assert type(module) is nn.Linear and model.get_submodule(name) is module
        assert result.finetuned and not torch.equal(result.dbf_Da, old[name][0])
        assert torch.equal(module.weight.data, result.compute_dequantized_weight().float())
        s_a, s_b = result.signs()
        flipped += int((s_a != old[name][1][0]).sum() + (s_b != old[name][1][1]).sum())
        assert module.weight.requires_grad
    assert flipped > 0  # sign_lr > 0 trains the signs too


def _runner_kl(distill_steps: int) -> tuple[float, DBF]:
    """KL of the fake-quantized stories260K to the full-precision logits on the calibration."""
    quantizer = DBF(iters=4, finetune_steps=0, distill_steps=distill_steps, distill_lr=2e-2)
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=32, num_calibration_samples=4, batch_size=2
    )
    config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    runner = Runner(config, quantizer, calibration, show_progress=False)
    runner.run()
    teacher = TeacherRecorder()
    teacher.record(config.load_model(), runner._batches())
    return _kl(runner.model, runner._batches(), teacher), quantizer


def test_runner_distils_after_the_last_block_when_distill_steps_is_set():
    plain, _ = _runner_kl(0)
    distilled, quantizer = _runner_kl(30)
    assert distilled < 0.8 * plain
    assert quantizer._teacher is None  # released after use
    assert all(r.finetuned for r in quantizer.results.values())
