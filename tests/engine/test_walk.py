"""The Runner: block-wise statistics, write-back, true-sequential groups, memory, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.engine import blocks as blockwise
from onecomp_core.engine.walk import choose_layers
from onecomp_core.rtn import RTN
from onecomp_core.seed_api import Runner
from onecomp_core.testing import HessianRTN, HessianRTNPlugin, registered_plugin

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"


def _model_config() -> ModelConfig:
    return ModelConfig(path=STORIES, dtype="float32", device="cpu")


def _calibration(batch_size: int = 4, samples: int = 8) -> CalibrationConfig:
    return CalibrationConfig(
        dataset=str(CALIB), max_length=64, num_calibration_samples=samples, batch_size=batch_size
    )


class RecordingRTN(HessianRTN):
    """Keeps every Hessian it was given, to check the Runner's statistics."""

    def quantize_layer(self, job):
        self.__dict__.setdefault("hessians", {})[job.name] = job.hessian.clone()
        return super().quantize_layer(job)


def test_rtn_needs_no_calibration_and_writes_back_dequantized_weights():
    runner = Runner(_model_config(), RTN(wbits=4), show_progress=False)
    results = runner.run()
    assert runner.calibration is None
    assert len(results) == 35  # 5 blocks × 7 Linears; lm_head excluded by default
    q = runner.model.get_submodule("model.layers.3.mlp.down_proj").weight
    expected = results["model.layers.3.mlp.down_proj"].compute_dequantized_weight().float()
    assert torch.equal(q, expected)
    assert q.unique().numel() <= 16 * 64  # at most 16 levels per row


def test_hessian_is_exact_over_batches_and_matches_direct_inputs():
    recorded = {}
    for batch_size in (1, 8):
        quantizer = RecordingRTN(wbits=4)
        Runner(_model_config(), quantizer, _calibration(batch_size), show_progress=False).run()
        recorded[batch_size] = quantizer.hessians
    name = "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(recorded[1][name], recorded[8][name], rtol=1e-5, atol=1e-6)

    # block 0 sees the unquantized embeddings, so its q_proj inputs can be captured directly
    runner = Runner(_model_config(), RTN(), _calibration(), show_progress=False)
    runner._load()
    runner._calibrate()
    inputs = []
    layer = runner.model.get_submodule(name)
    handle = layer.register_forward_hook(lambda m, a, o: inputs.append(a[0].reshape(-1, 64)))
    with torch.no_grad():
        runner.model(runner.calibration.input_ids)
    handle.remove()
    x = torch.cat(inputs).double()
    direct = (2 / x.shape[0]) * x.t() @ x
    torch.testing.assert_close(recorded[8][name].double(), direct, rtol=1e-4, atol=1e-6)


def test_later_blocks_see_quantized_inputs():
    """Block 1's Hessian must come from block 0's quantized outputs, not the original ones."""
    fp = RecordingRTN(wbits=8)
    low = RecordingRTN(wbits=2)
    for q in (fp, low):
        Runner(_model_config(), q, _calibration(), show_progress=False).run()
    first = "model.layers.0.self_attn.q_proj"
    later = "model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(fp.hessians[first], low.hessians[first])
    assert not torch.allclose(fp.hessians[later], low.hessians[later], rtol=1e-2)


def test_true_sequential_groups_follow_execution_order():
    runner = Runner(_model_config(), RTN(), _calibration(), show_progress=False)
    runner._load()
    runner._calibrate()
    runner.layers = choose_layers(runner.model, runner.quantizer)
    _, blocks = blockwise.find_blocks(runner.model)
    inputs, kwargs = blockwise.capture_inputs(
        runner.model, blocks[0], [(runner.calibration.input_ids[:2], None)], torch.device("cpu")
    )
    layers = {n: m for n, m in runner.layers.items() if n.startswith("model.layers.0.")}
    groups = blockwise.sequential_groups(blocks[0], layers, inputs[0], kwargs[0])
    short = [[n.rsplit(".", 1)[1] for n in g] for g in groups]
    assert short == [
        ["q_proj", "k_proj", "v_proj"],
        ["o_proj"],
        ["gate_proj", "up_proj"],
        ["down_proj"],
    ]


def test_only_the_current_block_is_on_the_compute_device(monkeypatch):
    """Blocks go to the device one at a time and come back before the next one leaves."""
    moves: list[tuple[int, str]] = []
    runner = Runner(_model_config(), HessianRTN(), _calibration(), show_progress=False)
    runner._load()
    _, blocks = blockwise.find_blocks(runner.model)
    for index, block in enumerate(blocks):
        original = block.to

        def recording_to(*args, _i=index, _orig=original, **kwargs):
            moves.append((_i, str(args[0] if args else kwargs.get("device"))))
            return _orig(*args, **kwargs)

        monkeypatch.setattr(block, "to", recording_to)
    runner.run()
    # block i goes to the compute device and back before block i + 1 moves at all
    assert moves == [(i, "cpu") for i in range(5) for _ in range(2)]


class StopAfter(Exception):
    pass


def _stop_after(index: int):
    def callback(context):
        if context.index == index:
            raise StopAfter(index)

    return callback


class NormTweakingRTN(HessianRTN):
    """Changes each block's norm weights after quantizing it, as block fine-tuning does."""

    def on_block_done(self, view):
        for name, param in view.block.named_parameters():
            if "layernorm" in name:
                param.data.mul_(1.0 + 0.01 * (view.index + 1))
        return {}


@pytest.mark.parametrize("quantizer_cls", [HessianRTN, NormTweakingRTN])
def test_resume_after_a_crash_is_bit_identical(tmp_path, one_thread, quantizer_cls):
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        whole = Runner(_model_config(), quantizer_cls(wbits=3), _calibration(), show_progress=False)
        whole.run()
        whole.save_quantized_model(tmp_path / "whole")

        ckpt = tmp_path / "ckpt"
        crashed = Runner(
            _model_config(),
            quantizer_cls(wbits=3),
            _calibration(),
            checkpoint_dir=ckpt,
            block_callback=_stop_after(2),
            show_progress=False,
        )
        with pytest.raises(StopAfter):
            crashed.run()
        assert (ckpt / "manifest.json").is_file()
        assert sorted(p.name for p in ckpt.glob("block_*")) == [
            "block_0000",
            "block_0001",
            "block_0002",
        ]
        resumed = Runner(
            _model_config(),
            quantizer_cls(wbits=3),
            _calibration(),
            checkpoint_dir=ckpt,
            show_progress=False,
        )
        quantized_again = []
        resumed.block_callback = lambda ctx: quantized_again.append(ctx.index)
        resumed.run()
        resumed.save_quantized_model(tmp_path / "resumed")
    assert quantized_again == [3, 4]
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_refuses_a_different_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = Runner(
        _model_config(),
        HessianRTN(wbits=3),
        _calibration(),
        checkpoint_dir=ckpt,
        block_callback=_stop_after(0),
        show_progress=False,
    )
    with pytest.raises(StopAfter):
        first.run()
    other = Runner(
        _model_config(),
        HessianRTN(wbits=4),
        _calibration(),
        checkpoint_dir=ckpt,
        show_progress=False,
    )
    with pytest.raises(ValueError, match=r"made with other settings \(method.wbits 3, now 4\)"):
        other.run()


def test_sub_groups_do_not_rerun_the_whole_block():
    """Each Linear runs once per batch per pass that needs its output, never for a later group.

    The statistics pass of a group stops at its last layer, so down_proj (the
    last group) computes only in the pass that makes the next block's inputs;
    the old engine ran every Linear of the block once per group (4 + 2 times).
    """
    calls: dict[str, int] = {}
    runner = Runner(_model_config(), HessianRTN(wbits=4), _calibration(4, 8), show_progress=False)
    runner._load()
    for name, module in runner.model.named_modules():
        if name.startswith("model.layers.0.") and isinstance(module, torch.nn.Linear):
            short = name.rsplit(".", 1)[1]
            module.register_forward_hook(
                lambda *_, key=short: calls.__setitem__(key, calls.get(key, 0) + 1)
            )
    runner.run()
    batches = 2  # 8 samples / batch size 4
    # A group's pass stops at its first layer once the group is known to share one input
    # (after the first batch): down runs in the final pass only; gate/up + the down group's
    # pass; o + the gate/up pass; q/k/v + the o pass. The order-finding pass (one batch)
    # runs all but down; in the first batch of a group's pass, all but its last layer run.
    assert calls == {
        "down_proj": batches,
        "gate_proj": 2 * batches + 1 + 1,
        "up_proj": 2 * batches + 1,
        "o_proj": 3 * batches + 1,
        "q_proj": 4 * batches + 1 + 1,
        "k_proj": 4 * batches + 1 + 1,
        "v_proj": 4 * batches + 1,
    }


def test_engine_reports_where_the_time_went_and_trims_the_heap_after_each_phase(monkeypatch):
    from onecomp_core.engine import walk
    from onecomp_core.engine.walk import Engine

    trims: list[int] = []
    monkeypatch.setattr(walk, "trim_heap", lambda: trims.append(1))
    runner = Runner(_model_config(), HessianRTN(wbits=4), _calibration(4, 8), show_progress=False)
    runner._load()
    runner._calibrate()
    layers = choose_layers(runner.model, runner.quantizer)
    data = [(runner.calibration.input_ids[i : i + 4], None) for i in (0, 4)]
    engine = Engine(runner.model, runner.quantizer, layers, data, torch.device("cpu"))
    engine.run()
    for key in ("capture_s", "statistics_s", "solve_s", "forward_s"):
        assert engine.timings[key] > 0, key
    # after every layer's solve, statistics pass and forward (not only after each of 5 blocks)
    assert len(trims) > 2 * len(layers)


class _WeightsAtSolve(HessianRTN):
    """Notes, at each attention solve of block 0, which of q, k, v hold a weight (a group)."""

    def quantize_layer(self, job):
        if job.name.startswith("model.layers.0.self_attn."):
            attn = self.__dict__.setdefault("model", None)
            held = {n for n in ("q_proj", "k_proj", "v_proj") if getattr(attn, n).weight.numel()}
            self.__dict__.setdefault("held", []).append((job.name.rsplit(".", 1)[1], held))
        return super().quantize_layer(job)


def test_a_solved_layer_gives_its_weight_back_until_its_group_is_written_back():
    """Within a group's solves a solved layer's weight is freed (nothing runs the block), the
    group's unsolved layers and the other groups' weights wait on disk, so a solve holds one
    fp layer, not the block; after the group every layer is written back."""
    q = _WeightsAtSolve(wbits=4)
    runner = Runner(_model_config(), q, _calibration(4, 8), show_progress=False)
    runner._load()
    q.__dict__["model"] = runner.model.get_submodule("model.layers.0.self_attn")
    results = runner.run()
    assert q.held == [
        ("q_proj", {"q_proj"}),  # k, v wait on disk for their turn
        ("k_proj", {"k_proj"}),
        ("v_proj", {"v_proj"}),
        ("o_proj", set()),  # the next group: q, k, v written back, set aside during its solve
    ]
    for name in ("q_proj", "k_proj", "v_proj"):
        full = f"model.layers.0.self_attn.{name}"
        weight = runner.model.get_submodule(full).weight
        assert torch.equal(weight, results[full].compute_dequantized_weight().float())
