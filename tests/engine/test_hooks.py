"""The Runner's whole-model hook: on_model_done runs once, last, with the calibration batches."""

from __future__ import annotations

from pathlib import Path

import torch

from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.rtn import RTN
from onecomp_core.seed_api import Runner
from onecomp_core.testing import HessianRTN

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"


class ModelHookRTN(HessianRTN):
    """Records the hook calls and what every layer looked like when the hook ran."""

    def on_block_done(self, view):
        self.__dict__.setdefault("events", []).append(("block", view.index))
        return {}

    def on_model_done(self, view):
        self.__dict__.setdefault("events", []).append(("model", len(view.batches)))
        self.results_at_hook = len(view.results)
        self.weights_at_hook = {
            name: view.model.get_submodule(name).weight.detach().clone() for name in view.results
        }
        return {}


def test_on_model_done_runs_once_after_every_layer_with_the_batches():
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=32, num_calibration_samples=6, batch_size=4
    )
    quantizer = ModelHookRTN(wbits=3)
    runner = Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"),
        quantizer,
        calibration,
        show_progress=False,
    )
    results = runner.run()
    assert quantizer.events == [*(("block", i) for i in range(5)), ("model", 2)]
    assert quantizer.results_at_hook == len(results) == 35
    for name, result in results.items():  # the hook saw the fake-quantized model
        expected = result.compute_dequantized_weight().float()
        assert torch.equal(quantizer.weights_at_hook[name], expected)


class BatchlessRTN(RTN):
    def on_model_done(self, view):
        self.batches_at_hook = view.batches
        return {}


def test_a_method_without_calibration_gets_no_batches():
    quantizer = BatchlessRTN(wbits=4)
    runner = Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"), quantizer, show_progress=False
    )
    assert len(runner.run()) == 35
    assert quantizer.batches_at_hook == []
