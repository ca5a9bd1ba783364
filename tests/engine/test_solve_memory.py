"""While a layer is solved, the block's activations and its other layers' weights are set
aside: no calibration batch (the quantized inputs, the fp outputs) and no other dense weight
of the block is in memory beside the solve, and the run's results do not change."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from onecomp_core.contract import FineTune, LayerJob, LayerResult, Method, Needs, param
from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.seed_api import Runner

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"
BATCH, LENGTH, HIDDEN = 4, 32, 64


def _activations_alive() -> int:
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor) and o.shape == (BATCH, LENGTH, HIDDEN)
    )


@dataclass
class Rounded(LayerResult):
    weight: torch.Tensor | None = None

    def dequantize(self, device=None):
        return self.weight.to(device or "cpu", torch.float16)


@dataclass
class Watching(Method):
    """fp16 rounding that counts the batch activations alive during each solve."""

    method: ClassVar[str] = "watching_test"
    alive: list = param(items=object, factory=list, internal=True, saved=False)
    #: per solve: the block's other layers whose dense weight is in memory
    dense_others: list = param(items=object, factory=list, internal=True, saved=False)
    layers: dict = param(items=object, factory=dict, internal=True, saved=False)

    def needs(self):  # fine-tuning keeps the fp outputs: both streams exist during the solves
        return Needs(inputs="full", finetune=FineTune(1, 1e-3))

    def prepare(self, view):
        self.layers.update(view.layers)

    def quantize_layer(self, job: LayerJob):
        self.alive.append(_activations_alive())
        block = job.name.rsplit(".", 2)[0]
        self.dense_others.append(
            [
                n
                for n, m in self.layers.items()
                if n.startswith(block + ".") and n != job.name and m.weight.numel() > 0
            ]
        )
        return Rounded(weight=job.weight.detach().half())


def test_no_batch_activation_is_alive_during_a_solve():
    method = Watching(include_layer_keywords=["layers.0."])
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=LENGTH, num_calibration_samples=8, batch_size=BATCH
    )
    model = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    Runner(model, method, calibration, show_progress=False).run()
    assert len(method.alive) == 7 and method.alive == [0] * 7


@dataclass
class WatchingGroups(Watching):
    """The same, solving in sequential sub-groups."""

    method: ClassVar[str] = "watching_groups_test"

    def needs(self):
        return Needs(inputs="full", sequential=True)


def test_no_other_dense_weight_of_the_block_is_in_memory_during_a_solve_and_all_come_back():
    method = WatchingGroups(include_layer_keywords=["layers.0."])
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=LENGTH, num_calibration_samples=8, batch_size=BATCH
    )
    model = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    original = dict(model.load_model().named_modules())
    results = Runner(model, method, calibration, show_progress=False).run()
    # the groups (q k v) (o) (gate up) (down): only the group's layers not solved yet are dense
    others = [[n.rsplit(".", 1)[1] for n in names] for names in method.dense_others]
    assert others == [["k_proj", "v_proj"], ["v_proj"], [], [], ["up_proj"], [], []]
    for name, layer in method.layers.items():  # every weight came back: the same bytes
        expected = original[name].weight.detach().half()
        assert torch.equal(results[name].weight, expected)
        assert torch.equal(layer.weight.detach(), expected.float())


def test_each_stream_waits_on_disk_while_the_other_runs_through_the_block(monkeypatch):
    from onecomp_core.engine import blocks

    seen = []
    real = blocks.run_block

    def spy(block, x, kwargs):  # the batch activations alive as a block forward starts
        seen.append(_activations_alive())
        return real(block, x, kwargs)

    monkeypatch.setattr(blocks, "run_block", spy)
    method = Watching(include_layer_keywords=["layers.0."])
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=LENGTH, num_calibration_samples=8, batch_size=BATCH
    )
    model = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    Runner(model, method, calibration, show_progress=False).run()
    # two batches: the running stream's inputs, plus the one output made so far (without
    # setting aside, the other stream's two batches as well: [4, 5, ...])
    assert len(seen) > 2 and seen == [2, 3] * (len(seen) // 2)
