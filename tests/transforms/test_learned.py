"""The learned rotation keeps the model's function, lowers the rounded model's loss, saves and
reloads, and steps aside (streamed hadamard) for models too large to train on."""

from __future__ import annotations

import json
import os

import pytest
import torch

from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.rtn import RTN
from onecomp_core.seed_api import Runner
from onecomp_core.storage.hf_folder import load_quantized_model
from onecomp_core.testing import tiny_model
from onecomp_core.transforms import learned
from onecomp_core.transforms.fake_quant import fake_quantize
from onecomp_core.transforms.learned import (
    LearnedTransforms,
    _kl,
    _logprobs,
    _names,
    _student,
    folded_weights,
    learn,
    too_large_reason,
    transformed,
)
from onecomp_core.transforms.rotation import check_rotation


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_any_transforms_keep_the_function(kind: str) -> None:
    torch.manual_seed(0)
    model = _trained_looking(tiny_model(kind))
    t = LearnedTransforms(model.config, seed=1)
    with torch.no_grad():  # arbitrary parameters: every part of the fold is exercised
        for param in t.parameters():
            param.copy_(0.3 * torch.randn_like(param))
        params = transformed(t, folded_weights(model), _names(model))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    student = _student(model, seed=1)
    got = torch.func.functional_call(student, params, (ids,)).logits
    assert torch.allclose(got, _logits(model, ids), atol=1e-4)
    # the scales are real: the rounded weights differ from those of the plain rotation
    plain = transformed(
        LearnedTransforms(model.config, seed=1), folded_weights(model), _names(model)
    )
    assert not torch.allclose(
        params[f"{_names(model)['blocks']}.0.mlp.up_proj.weight"],
        plain[f"{_names(model)['blocks']}.0.mlp.up_proj.weight"],
    )


def test_learning_lowers_the_rounded_models_loss() -> None:
    torch.manual_seed(0)
    model = _trained_looking(tiny_model("llama"))
    windows = torch.randint(0, model.config.vocab_size, (8, 32))
    student, names, base = _student(model, 0), _names(model), folded_weights(model)
    teacher = _logprobs(_logits(model, windows))

    def loss(t: LearnedTransforms) -> float:
        with torch.no_grad():
            params = transformed(t, base, names, bits=2)
            return float(
                _kl(
                    _logprobs(torch.func.functional_call(student, params, (windows,)).logits),
                    teacher,
                )
            )

    start = loss(LearnedTransforms(model.config, 0))
    trained = learn(model, windows, bits=2, steps=30, batch=8, lr=2e-2)
    assert loss(trained) < 0.8 * start


def test_fake_quantize_is_the_asymmetric_grid_with_straight_through_gradients() -> None:
    w = torch.randn(6, 10, requires_grad=True)
    q = fake_quantize(w, bits=2, group=4)  # groups of 4, 4 and 2 columns
    for row_q in q.detach():
        for part in (row_q[:4], row_q[4:8], row_q[8:]):
            assert part.unique().numel() <= 4
    assert (q - w).abs().max() < (w.max() - w.min()) / 3
    q.sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_learned_rotation_saves_and_reloads(stories_path, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(learned, "STEPS", 4)  # the wiring, not the optimum
    runner = Runner(
        model_config=ModelConfig(path=str(stories_path), dtype="float32", device="cpu"),
        quantizer=RTN(wbits=3, sym=False),
        calibration_config=CalibrationConfig(
            dataset=["Once upon a time there was a little dog who liked to run. " * 8] * 4,
            max_length=48,
            num_calibration_samples=4,
        ),
        rotation="learned",
        show_progress=False,
        save_dtype="float32",
    )
    out = runner.quantize_to(tmp_path / "learned")
    spec = json.loads((out / "config.json").read_text())["quantization_config"]["rotation"]
    assert spec["kind"] == "learned" and spec["trained_for"] == {"bits": 3, "group": -1, "steps": 4}
    norm = runner.model.model.layers[0].input_layernorm.weight
    assert not torch.allclose(norm, torch.ones_like(norm))  # trained scales, saved with it
    loaded, _ = load_quantized_model(out)
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(
        _logits(loaded, ids), _logits(runner.create_quantized_model(), ids), atol=1e-5
    )


def test_learned_is_an_allowed_value_and_too_large_models_fall_back(tmp_path) -> None:
    assert check_rotation("learned") == "learned"
    with pytest.raises(ValueError, match="expected one of hadamard, learned, none"):
        check_rotation("spin")
    assert too_large_reason(tmp_path) is None
    with open(tmp_path / "model.safetensors", "wb") as f:  # sparse: no disk used
        f.truncate(learned.MAX_WEIGHT_BYTES + 1)
    assert "exceed" in too_large_reason(tmp_path)
    os.remove(tmp_path / "model.safetensors")
