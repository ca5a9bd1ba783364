"""The streamed run: the CLI's output equals today's whole-model save, tensor for tensor.

Each case quantizes a real checkpoint twice: ``onecomp quantize`` (the model
streamed block by block, the output written per block) and the whole-model
path (``Runner.run`` + ``save_quantized_model``), and compares every saved
tensor bit for bit, the keys, and ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp_core import CalibrationConfig, ModelConfig, Runner, create_method
from onecomp_core.cli import main
from onecomp_core.storage import load_quantized_model
from onecomp_core.testing import saved_tensors, tiny_model

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
TEXT = ASSETS / "text" / "wikitext2-valid.tokens.txt"
CALIBRATION = ["--calibration", str(TEXT), "--num-samples", "4", "--max-length", "32"]
CASES = {
    "rtn": ["--method", "rtn", "--set", "wbits=4"],
    "gptq": ["--method", "gptq", "--set", "wbits=3", "--set", "groupsize=32"],
    # block fine-tuning on (the full-precision stream), model distillation off
    "dbf": ["--method", "dbf", "--set", "distill_steps=0", "--set", "finetune_steps=3"],
    # block fine-tuning and the model-level distillation, both through the streamed blocks
    "dbf_distilled": [
        "--method",
        "dbf",
        "--set",
        "distill_steps=3",
        "--set",
        "finetune_steps=2",
    ],
    # the plan scores every layer block by block (weight errors by the streamed moments)
    "autobit_planned": ["--method", "autobit", "--set", "target_bit=3"],
    "autobit": [
        "--method",
        "autobit",
        "--set",
        'quantizers=[{"method": "gptq", "wbits": 4, "groupsize": 32, '
        '"include_layer_keywords": ["self_attn"]}, {"method": "rtn", "wbits": 2}]',
        "--set",
        "assignment_strategy=manual",
    ],
}


def _assert_same_output(streamed: Path, whole: Path) -> None:
    ours, theirs = saved_tensors(streamed), saved_tensors(whole)
    assert sorted(ours) == sorted(theirs)
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and torch.equal(ours[key], tensor), key
    config = json.loads((streamed / "config.json").read_text())
    assert config == json.loads((whole / "config.json").read_text())


def _settings(args: list[str]) -> dict:
    settings = {}
    for value in args[3::2]:
        name, _, raw = value.partition("=")
        try:
            settings[name] = json.loads(raw)
        except json.JSONDecodeError:
            settings[name] = raw
    return settings


def _whole(model: Path, case: list[str], out: Path) -> Path:
    """Today's path: the whole model in memory, the packed model built and saved at the end."""
    runner = Runner(
        ModelConfig(path=str(model), dtype="float32", device="cpu"),
        create_method(case[1], **_settings(case)),
        CalibrationConfig(dataset=str(TEXT), num_calibration_samples=4, max_length=32),
        show_progress=False,
    )
    runner.run()
    return runner.save_quantized_model(out)


def _streamed(model: Path, case: list[str], out: Path, *extra: str) -> list[str]:
    args = ["quantize", str(model), *case, *CALIBRATION, "--out", str(out), "--quiet", *extra]
    assert main(args) == 0
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("method", sorted(CASES))
def test_streamed_output_equals_the_whole_model_save(tmp_path, one_thread, method, caplog):
    files = _streamed(STORIES, CASES[method], tmp_path / "streamed")
    assert "streaming off" not in caplog.text
    assert "model.safetensors.index.json" in files and "generation_config.json" in files
    assert (
        sum(f.endswith(".safetensors") for f in files) == 5 + 2
    )  # 5 blocks; embeddings (tied to the head), norm
    _assert_same_output(tmp_path / "streamed", _whole(STORIES, CASES[method], tmp_path / "whole"))


@pytest.mark.parametrize("kind", ["qwen3", "gpt2"])
def test_other_architectures_stream_the_same(tmp_path, one_thread, kind):
    model = tmp_path / kind
    tiny_model(kind, vocab_size=512).save_pretrained(model)
    STORIES_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")
    for name in STORIES_TOKENIZER:
        (model / name).write_bytes((STORIES / name).read_bytes())
    _streamed(model, CASES["gptq"], tmp_path / "streamed")
    _assert_same_output(tmp_path / "streamed", _whole(model, CASES["gptq"], tmp_path / "whole"))


def test_streamed_gptq_loads_with_the_same_logits(tmp_path, one_thread):
    _streamed(STORIES, CASES["gptq"], tmp_path / "streamed")
    ids = torch.arange(1, 40).unsqueeze(0)
    with torch.no_grad():
        ours = load_quantized_model(tmp_path / "streamed")[0](input_ids=ids).logits
        whole = load_quantized_model(_whole(STORIES, CASES["gptq"], tmp_path / "w"))[0]
        assert torch.equal(ours, whole(input_ids=ids).logits)


def test_offloaded_activations_give_the_same_output_and_are_deleted(tmp_path, one_thread):
    offload = tmp_path / "activations"
    _streamed(STORIES, CASES["dbf"], tmp_path / "disk", "--offload-activations", str(offload))
    _streamed(STORIES, CASES["dbf"], tmp_path / "memory")
    _assert_same_output(tmp_path / "disk", tmp_path / "memory")
    assert list(offload.iterdir()) == []


def test_a_killed_run_resumes_to_the_same_output(tmp_path, one_thread):
    checkpoint = tmp_path / "ckpt"
    case = [*CASES["gptq"], "--checkpoint-dir", str(checkpoint)]

    def crash(view):
        if view.index == 2:
            raise KeyboardInterrupt

    runner_init = Runner.__init__

    def with_crash(self, *args, **kwargs):
        timer = kwargs.pop("block_callback", None)  # the CLI's clock of blocks (--summary-json)

        def timed_crash(view):
            if timer is not None:
                timer(view)
            crash(view)

        runner_init(self, *args, **kwargs, block_callback=timed_crash)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Runner, "__init__", with_crash)
        args = ["quantize", str(STORIES), *case, *CALIBRATION, "--out", str(tmp_path / "resumed")]
        assert main([*args, "--quiet"]) == 130  # interrupted (Ctrl-C) after block 2
    shards = sorted(p.name for p in (checkpoint / "output.partial").glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00007.safetensors" for i in (1, 2, 3)]
    assert not (tmp_path / "resumed").exists()
    _streamed(STORIES, case, tmp_path / "resumed")
    _assert_same_output(tmp_path / "resumed", _whole(STORIES, CASES["gptq"], tmp_path / "whole"))


def test_a_whole_model_step_loads_the_model_whole_with_a_notice(tmp_path, caplog):
    # without calibration text the text is sampled from the model: the whole model is needed
    case = ["--method", "gptq", "--set", "wbits=4", "--num-samples", "2", "--max-length", "16"]
    args = ["quantize", str(STORIES), *case, "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    assert "streaming off (the calibration text is sampled from the model itself)" in caplog.text
    assert "model.safetensors" in sorted(p.name for p in (tmp_path / "out").iterdir())
