"""The Runner's whole-model hook: on_model_done runs once, last, with the calibration batches."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from onecomp_core.cli import main
from onecomp_core.contract import Needs, Register, hookimpl
from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.rtn import RTN
from onecomp_core.seed_api import Runner
from onecomp_core.testing import HessianRTN, registered_plugin

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


@dataclass
class ModelPassRTN(HessianRTN):
    """Asks for a model pass; records, at each solve, whether the results it returned for
    earlier blocks still hold their tensors in memory, and what the model step saw."""

    method: ClassVar[str] = "model_pass_rtn_test"
    record: ClassVar[dict] = {}

    def needs(self) -> Needs:
        return dataclasses.replace(super().needs(), model_pass=True)

    def quantize_layer(self, job):
        returned = self.record.setdefault("returned", {})
        block = int(job.name.split(".")[2])
        earlier = [r for n, (r, _) in returned.items() if int(n.split(".")[2]) < block]
        in_memory = [r.codes.device.type != "meta" for r in earlier]
        self.record.setdefault("earlier_in_memory", []).extend(in_memory)
        result = super().quantize_layer(job)
        returned[job.name] = (result, result.codes.clone())
        return result

    def on_model_done(self, view):
        self.record["at_hook"] = {n: r.codes.clone() for n, r in view.results.items()}
        return {}


class ModelPassPlugin:
    @hookimpl
    def onecomp_register(self, register: Register) -> None:
        register.add_method(ModelPassRTN)


def test_a_streamed_run_keeps_earlier_results_on_disk_until_the_model_step(tmp_path):
    """Finished blocks' results wait on disk (meta tensors) while later blocks run; the
    model step gets them back with the same bytes the solves returned."""
    ModelPassRTN.record.clear()
    data = ["--calibration", str(CALIB), "--num-samples", "4", "--max-length", "32"]
    with registered_plugin(ModelPassPlugin()):
        args = ["quantize", str(STORIES), "--method", "model_pass_rtn_test", *data]
        assert main([*args, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    record = ModelPassRTN.record
    # every solve of block b looked at the 7·b results of blocks 0 … b−1: none in memory
    assert len(record["earlier_in_memory"]) == 7 * 7 * (0 + 1 + 2 + 3 + 4)
    assert not any(record["earlier_in_memory"])
    assert record["at_hook"].keys() == record["returned"].keys() and len(record["at_hook"]) == 35
    for name, codes in record["at_hook"].items():
        assert torch.equal(codes, record["returned"][name][1])
