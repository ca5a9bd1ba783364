"""DBF through the engine (the seed ``Runner``): quantize → save → load, distillation, gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onecomp_core import CalibrationConfig, ModelConfig, Runner, load_quantized_model
from onecomp_core.data.calibration import batches
from onecomp_dbf import DBF, DoubleBinaryLinear
from onecomp_dbf.distill import kl_loss

STORIES = Path(__file__).resolve().parents[4] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"
pytestmark = pytest.mark.skipif(not STORIES.is_dir(), reason="stories260K is not available")


def _runner(method: DBF) -> Runner:
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=32, num_calibration_samples=4, batch_size=2
    )
    config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    # float32 saving: the loaded model must equal the packed one in memory exactly
    return Runner(config, method, calibration, show_progress=False, save_dtype="float32")


def test_runner_save_load_logits_equal(tmp_path):
    runner = _runner(DBF(iters=8, finetune_steps=3, distill_steps=3))
    results = runner.run()
    assert len(results) == 35 and all(r.is_dbf_quantized for r in results.values())
    assert all(r.finetuned for r in results.values())
    for name, result in results.items():  # the engine wrote the final results back
        weight = runner.model.get_submodule(name).weight
        assert torch.equal(weight, result.dequantize().float())
    ids = torch.tensor([[1, 403, 407, 261, 378, 418, 260, 296, 324, 262]])
    with torch.no_grad():
        fake = runner.model(input_ids=ids).logits
    runner.save_quantized_model(tmp_path / "q")
    model, _ = load_quantized_model(tmp_path / "q", device_map="cpu")
    layer = model.get_submodule("model.layers.2.mlp.down_proj")
    assert isinstance(layer, DoubleBinaryLinear)
    assert layer.mid_features == results["model.layers.2.mlp.down_proj"].mid_features
    with torch.no_grad():
        loaded = model(input_ids=ids).logits
    # the fake-quantized model holds fp16-rounded dense weights, the packed one the exact factors
    torch.testing.assert_close(loaded, fake, rtol=1e-3, atol=3e-2)
    with torch.no_grad():
        packed_in_memory = runner.create_quantized_model()(input_ids=ids).logits
    assert torch.equal(loaded, packed_in_memory)


def _runner_kl(distill_steps: int) -> tuple[float, DBF, Runner]:
    """KL of the fake-quantized stories260K to the full-precision logits on the calibration
    (distilled on the calibration text; the sampled-text default: tests/test_samples.py)."""
    method = DBF(
        iters=4, finetune_steps=0, distill_steps=distill_steps, distill_lr=2e-2,
        distill_data="calibration",
    )  # fmt: skip
    runner = _runner(method)
    runner.run()
    data = list(batches(runner.calibration, runner.calibration_config.batch_size))
    original = runner.model_config.load_model()
    with torch.no_grad():
        kl = sum(
            kl_loss(runner.model(input_ids=ids).logits, original(input_ids=ids).logits).item()
            for ids, _ in data
        )
    return kl, method, runner


def test_runner_distils_after_the_last_block_when_distill_steps_is_set():
    plain, _, _ = _runner_kl(0)
    distilled, method, runner = _runner_kl(30)
    assert distilled < 0.8 * plain
    assert method._teacher is None  # released after use
    assert all(r.finetuned for r in runner.results.values())


def test_activation_gradient_weighting_runs_with_engine_moments():
    """The engine collects the output-gradient moments DBF's needs() asks for."""
    runner = _runner(DBF(iters=4, finetune_steps=0, weighting="activation_gradient"))
    results = runner.run()
    assert len(results) == 35 and all(r.is_dbf_quantized for r in results.values())
    assert {r.weighting for r in results.values()} == {"activation_gradient"}
    plain = _runner(DBF(iters=4, finetune_steps=0)).run()
    name = "model.layers.0.mlp.down_proj"
    assert not torch.equal(results[name].dequantize(), plain[name].dequantize())
