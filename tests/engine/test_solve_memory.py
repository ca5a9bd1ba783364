"""While a layer is solved, the block's activations, its other layers' weights and their
Hessians are set aside: no calibration batch (the quantized inputs, the fp outputs), no other
dense weight of the block and no other layer's H is in memory beside the solve, and the run's
results do not change."""

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
BATCH, LENGTH, HIDDEN, INTERMEDIATE = 4, 32, 64, 172


def _activations_alive() -> int:
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor) and o.shape == (BATCH, LENGTH, HIDDEN)
    )


def _down_hessians_alive() -> int:
    """down_proj's H is the only (172 × 172) tensor of a stories260K run."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor) and o.shape == (INTERMEDIATE, INTERMEDIATE)
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
    #: per solve: how many copies of down_proj's H are in memory
    down_h: list = param(items=object, factory=list, internal=True, saved=False)

    def needs(self):  # fine-tuning keeps the fp outputs: both streams exist during the solves
        return Needs(inputs="full", finetune=FineTune(1, 1e-3))

    def prepare(self, view):
        self.layers.update(view.layers)

    def quantize_layer(self, job: LayerJob):
        self.alive.append(_activations_alive())
        self.down_h.append(_down_hessians_alive())
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
    original, results = _run(method)
    assert len(method.alive) == 7 and method.alive == [0] * 7
    # one group of seven layers: the six others wait on disk (weight and H) for their turn
    assert method.dense_others == [[]] * 7
    assert method.down_h == [0] * 6 + [1]  # down_proj's own H, in its job
    _all_came_back(method, original, results)


def _run(method: Watching) -> tuple[dict, dict]:
    """(the model's modules before the run, the run's results): layer 0, 8 windows of 32."""
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=LENGTH, num_calibration_samples=8, batch_size=BATCH
    )
    model = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    original = dict(model.load_model().named_modules())
    return original, Runner(model, method, calibration, show_progress=False).run()


def _all_came_back(method: Watching, original: dict, results: dict) -> None:
    for name, layer in method.layers.items():  # every weight came back: the same bytes
        expected = original[name].weight.detach().half()
        assert torch.equal(results[name].weight, expected)
        assert torch.equal(layer.weight.detach(), expected.float())


@dataclass
class WatchingGroups(Watching):
    """The same, solving in sequential sub-groups."""

    method: ClassVar[str] = "watching_groups_test"

    def needs(self):
        return Needs(inputs="full", sequential=True)


def test_no_other_dense_weight_of_the_block_is_in_memory_during_a_solve_and_all_come_back():
    method = WatchingGroups(include_layer_keywords=["layers.0."])
    original, results = _run(method)
    # the groups (q k v) (o) (gate up) (down): the rest of the block set aside, and the
    # group's layers not solved yet waiting on disk
    assert method.dense_others == [[]] * 7
    assert method.down_h == [0] * 6 + [1]
    _all_came_back(method, original, results)


def test_each_stream_waits_on_disk_while_the_other_runs_through_the_block(monkeypatch):
    from onecomp_core.engine import blocks

    seen = []
    real = blocks.run_block

    def spy(block, x, kwargs):  # the batch activations alive as a block forward starts
        seen.append(_activations_alive())
        return real(block, x, kwargs)

    monkeypatch.setattr(blocks, "run_block", spy)
    method = Watching(include_layer_keywords=["layers.0."])
    _run(method)
    # two batches: the running stream's inputs, plus the one output made so far (without
    # setting aside, the other stream's two batches as well: [4, 5, ...])
    assert len(seen) > 2 and seen == [2, 3] * (len(seen) // 2)


def test_a_statistics_pass_holds_one_batch_of_the_block_inputs(monkeypatch):
    from onecomp_core.engine import blocks

    seen = []
    real = blocks.StopAfter.run

    def spy(self, block, hidden, kwargs, only=None):  # batches alive as a statistics pass starts
        seen.append(_activations_alive())
        return real(self, block, hidden, kwargs, only)

    monkeypatch.setattr(blocks.StopAfter, "run", spy)
    method = Watching(include_layer_keywords=["layers.0."])
    original, results = _run(method)
    # the batch being read (held two batches without reading them back one at a time)
    assert seen == [1, 1]
    _all_came_back(method, original, results)


def test_a_statistics_pass_reads_only_the_weights_of_the_layers_it_runs():
    from torch import nn

    from onecomp_core.engine.blocks import StopAfter
    from onecomp_core.engine.offload import weights_until_used

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    before = [m.weight.detach().clone() for m in block]
    dense = []
    block[0].register_forward_hook(lambda m, a, o: dense.append([x.weight.numel() for x in block]))
    stop = StopAfter([block[1]])  # the pass stops as layer 1 is entered
    with stop, weights_until_used(list(block)):
        for _ in range(2):
            stop.run(block, torch.randn(2, 4), {})
    # layer 0 came back as it ran; layer 1 (where the pass stops) and 2 never did
    assert dense == [[16, 0, 0], [16, 0, 0]]
    assert all(torch.equal(m.weight, w) for m, w in zip(block, before, strict=True))
    assert all(len(m._forward_pre_hooks) == 0 for m in block)  # no hook left behind
