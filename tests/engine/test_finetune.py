"""The engine's block fine-tuning: twins trained after each block, kept only when they help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from onecomp_core.contract import FineTune, LayerJob, LayerResult, Method, Needs, param
from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.kernels import ScaledSignsTwin, pack_signs, scaled_signs, unpack_signs
from onecomp_core.seed_api import Runner

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"


@dataclass
class SignResult(LayerResult):
    signs: torch.Tensor | None = None
    row: torch.Tensor | None = None
    out_features: int = 0
    in_features: int = 0

    def dequantize(self, device=None):
        s = unpack_signs(self.signs, self.out_features, self.in_features)
        return scaled_signs(s, self.row).to(device or "cpu", torch.float16)


class SignTwin(ScaledSignsTwin):
    def __init__(self, result: SignResult, bias):
        s = unpack_signs(result.signs, result.out_features, result.in_features)
        super().__init__(s, result.row, bias=bias)
        self.result = result

    def to_result(self):
        parts = self.parts()
        return dataclasses.replace(self.result, row=parts.row.half(), signs=pack_signs(parts.signs))


@dataclass
class SignMethod(Method):
    """W ≈ diag(mean|w_i|)·sign(W), fine-tuned per block (a toy 1-bit method)."""

    method: ClassVar[str] = "sign_test"
    steps: int = param(20, ge=0)
    seen: list = param(items=object, factory=list, internal=True, saved=False)

    def needs(self):
        return Needs(finetune=FineTune(self.steps, 1e-2))

    def quantize_layer(self, job: LayerJob):
        w = job.weight.float()
        n, m = w.shape
        row = w.abs().mean(dim=1).half()
        return SignResult(signs=pack_signs(w), row=row, out_features=n, in_features=m)

    def trainable_layer(self, result, linear):
        return SignTwin(result, linear.bias)

    def on_block_done(self, view):
        # what the hook sees: the results the engine kept, and their weights written in
        for name, result in view.results.items():
            written = view.layers[name].weight.detach()
            self.seen.append(torch.equal(written, result.dequantize().float()))
        return {}


def _run(steps: int):
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=32, num_calibration_samples=8, batch_size=4
    )
    method = SignMethod(steps=steps, include_layer_keywords=["layers.0.", "layers.1."])
    runner = Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"),
        method,
        calibration,
        show_progress=False,
    )
    return runner.run(), method


@pytest.fixture(scope="module")
def runs():
    return _run(0), _run(20)


def test_finetune_declared_turns_the_fp_stream_on():
    assert Needs(finetune=FineTune(5, 1e-3)).fp_stream
    assert not Needs(finetune=FineTune(0, 1e-3)).fp_stream
    with pytest.raises(ValueError, match="steps"):
        FineTune(-1, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        FineTune(1, 0.0)


def test_zero_steps_is_the_layer_wise_result(runs):
    (plain, _), _ = runs
    for result in plain.values():
        w = result.dequantize().float()  # layer-wise: |ŵ_ij| = the row's mean |w|
        assert torch.allclose(w.abs().mean(dim=1), result.row.float(), rtol=1e-3)


def test_fine_tuning_changes_the_scales_and_the_hook_sees_the_kept_results(runs):
    (plain, _), (tuned, method) = runs
    assert set(plain) == set(tuned) and len(tuned) == 14
    changed = [n for n in tuned if not torch.equal(tuned[n].row, plain[n].row)]
    assert len(changed) == len(tuned)
    for n in tuned:  # the signs are not trained (no sign_lr)
        assert torch.equal(tuned[n].signs, plain[n].signs)
    assert method.seen and all(method.seen)


def test_fine_tuned_model_is_closer_to_the_fp_model(runs):
    """The fine-tuned scales give logits closer to the fp model's than the layer-wise ones."""
    from onecomp_core.data.model import ModelConfig as MC

    fp = MC(path=STORIES, dtype="float32", device="cpu").load_model()
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = fp(ids).logits
    errors = []
    for results, _ in runs:
        model = MC(path=STORIES, dtype="float32", device="cpu").load_model()
        for name, result in results.items():
            model.get_submodule(name).weight.data = result.dequantize().float()
        with torch.no_grad():
            errors.append((model(ids).logits - target).pow(2).mean().item())
    assert errors[1] < 0.95 * errors[0]
