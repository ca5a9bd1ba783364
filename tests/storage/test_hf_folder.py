"""Saving and loading: packed layers, strict checks, tied embeddings, formats, tiny architectures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from onecomp_core.contract import Artifact, LayerJob, LayerResult, Method, hookimpl
from onecomp_core.data.adapters import linearize_conv1d
from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.kernels import PackedIntLinear
from onecomp_core.rtn import RTN
from onecomp_core.storage import (
    apply_results,
    build_artifact,
    load_artifact,
    load_quantized_model,
    packed_model,
    save_dequantized_model,
    save_quantized_model,
)
from onecomp_core.testing import HessianRTN, HessianRTNPlugin, registered_plugin, tiny_model

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
EXTRA = {"calibration_hash": "c0ffee", "qep": None}


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _ids(n: int = 48) -> torch.Tensor:
    return torch.arange(1, n + 1).remainder(500).unsqueeze(0)


@dataclass
class Run:
    """What a run leaves: the fake-quantized model, the method, its results, the tokenizer."""

    model: nn.Module
    method: Method
    results: dict[str, LayerResult]
    tokenizer: Any

    def artifact(self, **extra: Any) -> Artifact:
        return build_artifact(self.model, self.method, self.results, self.tokenizer, EXTRA | extra)

    def save(self, out: Path, **kwargs: Any) -> Path:
        return save_quantized_model(self.artifact(), out, **kwargs)


def rtn_run(model: nn.Module, tokenizer: Any = None, method: Method | None = None) -> Run:
    """Every block Linear quantized by RTN (no engine: each layer on its own weight)."""
    method = method or RTN(wbits=4)
    results = {
        name: method.quantize(LayerJob(name, module))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    apply_results(model, results)
    return Run(model, method, results, tokenizer)


@pytest.fixture(scope="module")
def run() -> Run:
    config = ModelConfig(path=STORIES, dtype="float32", device="cpu")
    return rtn_run(config.load_model(), config.load_tokenizer())


def test_apply_results_writes_the_dequantized_weight_in_the_module_dtype():
    model = tiny_model("llama")
    name = "model.layers.0.mlp.up_proj"
    module = model.get_submodule(name)
    result = RTN(wbits=3).quantize(LayerJob(name, module))
    assert apply_results(model, {name: result}) is model
    assert module.weight.dtype == torch.float32
    assert torch.equal(module.weight.data, result.dequantize().float())


def test_saved_folder_is_a_hugging_face_folder_with_a_layer_table(run, tmp_path):
    out = run.save(tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert {k: v for k, v in qc.items() if k != "layers"} == {
        "bits": 4,
        "group_size": -1,
        "sym": True,
        "config_version": 1,
        "quant_method": "onecomp",
        "method": "rtn",
        "format_version": 1,
        "quantizer": "RTN",
        "calibration_hash": "c0ffee",
    }
    row = qc["layers"]["model.layers.0.mlp.down_proj"]
    assert row == {
        "method": "rtn",
        "in_features": 172,
        "out_features": 64,
        "bias": False,
        "bits": 4,
        "groupsize": -1,
        "sym": True,
        "effective_bits": pytest.approx(4 + 20 / 172),
    }
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temp folder left behind


def test_qep_and_conv1d_settings_are_recorded_when_set(run, tmp_path):
    assert "qep" not in run.artifact().quantization_config
    qc = run.artifact(qep={"perccorr": 0.25}).quantization_config
    assert qc["qep"] == {"perccorr": 0.25} and "conv1d_as_linear" not in qc
    model = tiny_model("gpt2")
    assert linearize_conv1d(model) == 8  # four per block
    gpt2 = rtn_run(model)
    out = save_quantized_model(gpt2.artifact(conv1d_as_linear=True), tmp_path / "gpt2")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["conv1d_as_linear"] is True and len(qc["layers"]) == 8
    loaded, _ = load_quantized_model(out)
    assert (_logits(loaded, _ids(20)) - _logits(model, _ids(20))).abs().max().item() <= 1e-5


def test_load_gives_the_same_logits_as_the_in_memory_model(run, tmp_path):
    out = run.save(tmp_path / "q")
    loaded, tokenizer = load_quantized_model(out)
    assert isinstance(loaded.get_submodule("model.layers.2.self_attn.k_proj"), PackedIntLinear)
    assert tokenizer is not None
    ids = _ids()
    fake_quant = _logits(run.model, ids)
    packed = _logits(packed_model(run.model, run.method, run.results), ids)
    reloaded = _logits(loaded, ids)
    assert (reloaded - packed).abs().max().item() <= 1e-5
    assert (reloaded - fake_quant).abs().max().item() <= 1e-5
    # the tied lm_head is stored once and tied again on load
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_the_packed_model_shares_the_untouched_tensors(run):
    packed = packed_model(run.model, run.method, run.results)
    embed = run.model.model.embed_tokens.weight
    assert packed.model.embed_tokens.weight.data_ptr() == embed.data_ptr()
    assert packed.config.to_dict() == run.model.config.to_dict()


def test_saved_size_is_smaller_than_fp16(run, tmp_path):
    out = run.save(tmp_path / "q")
    size = (out / "model.safetensors").stat().st_size
    params = sum(p.numel() for p in run.model.parameters())
    assert size < 0.6 * 2 * params


def test_refuses_an_existing_folder_unless_overwrite(run, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        run.save(out)
    run.save(out, overwrite=True)
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_a_failed_save_leaves_nothing_behind(run, tmp_path):
    artifact = run.artifact()
    artifact.tokenizer = None
    artifact.model = None  # the writer fails half-way
    with pytest.raises(AttributeError):
        save_quantized_model(artifact, tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_is_named_before_writing(run, tmp_path):
    with pytest.raises(ValueError, match=r"unknown format 'gguf9' \(installed: .*hf"):
        save_quantized_model(run.artifact(), tmp_path / "q", format="gguf9")
    assert not (tmp_path / "q").exists()


def test_a_saved_folder_loads_back_as_an_artifact_and_saves_the_same(run, tmp_path):
    from safetensors.torch import load_file

    out = run.save(tmp_path / "q")
    artifact = load_artifact(out)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert artifact.quantization_config == qc and artifact.rows == qc["layers"]
    assert artifact.results == {} and artifact.tokenizer is not None
    again = save_quantized_model(artifact, tmp_path / "again")
    first, second = (load_file(str(p / "model.safetensors")) for p in (out, again))
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert json.loads((again / "config.json").read_text()) == json.loads(
        (out / "config.json").read_text()
    )


def test_save_dequantized_model_is_a_plain_folder(run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = save_dequantized_model(run.model, run.tokenizer, tmp_path / "dq")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert (_logits(plain, _ids()) - _logits(run.model, _ids())).abs().max().item() <= 1e-5


def test_truncated_weights_are_reported(run, tmp_path):
    out = run.save(tmp_path / "q")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_quantized_model(out)


def test_missing_tensor_is_reported_by_name(run, tmp_path):
    from safetensors.torch import load_file, save_file

    out = run.save(tmp_path / "q")
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.scales"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing: model\.layers\.1\.mlp\.up_proj\.scales"):
        load_quantized_model(out)


def test_config_without_quantization_config_is_refused(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="no onecomp quantization_config"):
        load_quantized_model(folder)


def _edit_config(out: Path, edit) -> None:
    config = json.loads((out / "config.json").read_text())
    edit(config["quantization_config"])
    (out / "config.json").write_text(json.dumps(config))


def test_missing_plugin_is_named(run, tmp_path):
    out = run.save(tmp_path / "q")

    def rename(qc):
        for row in qc["layers"].values():
            row["method"] = "dbf2"

    _edit_config(out, rename)
    with pytest.raises(ValueError, match="unknown quantization method 'dbf2'"):
        load_quantized_model(out)


def test_a_newer_format_version_is_named(run, tmp_path):
    out = run.save(tmp_path / "q")
    _edit_config(out, lambda qc: qc.update(format_version=2))
    with pytest.raises(ValueError, match="format_version 2 is newer than this onecomp supports"):
        load_quantized_model(out)


def test_folders_saved_before_config_version_still_load(run, tmp_path):
    out = run.save(tmp_path / "q")
    _edit_config(out, lambda qc: qc.pop("config_version"))
    loaded, _ = load_quantized_model(out)
    assert (_logits(loaded, _ids()) - _logits(run.model, _ids())).abs().max().item() <= 1e-5


# -- results of several methods: each packed by the method that made it ---------------------------
@dataclass
class Marked(RTN):
    """RTN whose packed layers say which instance made them."""

    method = "marked_rtn"

    def inference_layer(self, result, linear):
        layer = super().inference_layer(result, linear)
        layer.made_by = self
        return layer


class MarkedPlugin:
    @hookimpl
    def onecomp_register(self, register) -> None:
        register.add_method(Marked)


def test_each_result_is_packed_by_the_method_named_in_it(run, tmp_path):
    names = list(run.results)
    mine = RTN(wbits=4)
    results = dict(run.results)
    results[names[0]] = Marked(wbits=4).quantize(
        LayerJob(names[0], run.model.get_submodule(names[0]))
    )
    with registered_plugin(MarkedPlugin(), name="marked"):
        packed = packed_model(run.model, mine, results)
        made_by = packed.get_submodule(names[0]).made_by
        assert type(made_by) is Marked and made_by == Marked()  # default-constructed
        assert not hasattr(packed.get_submodule(names[1]), "made_by")
        out = save_quantized_model(
            build_artifact(run.model, mine, results, None, EXTRA), tmp_path / "q"
        )
        rows = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
        assert rows[names[0]]["method"] == "marked_rtn" and rows[names[1]]["method"] == "rtn"
        loaded, tokenizer = load_quantized_model(out)
    assert tokenizer is None
    assert (_logits(loaded, _ids()) - _logits(packed, _ids())).abs().max().item() <= 1e-5


# -- through the Runner: every tiny architecture, and its evaluation facades ---------------------
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2", "bert"])
def test_tiny_architectures_quantize_save_and_load(kind, tmp_path):
    from transformers import AutoTokenizer

    from onecomp_core.seed_api import Runner

    src = tmp_path / "src"
    tiny_model(kind, vocab_size=512).save_pretrained(src)
    AutoTokenizer.from_pretrained(STORIES).save_pretrained(src)
    calibration = CalibrationConfig(
        dataset=str(ASSETS / "text" / "wikitext2-valid.tokens.txt"),
        max_length=32,
        num_calibration_samples=4,
        batch_size=2,
    )
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        runner = Runner(
            ModelConfig(path=src, dtype="float32", device="cpu"),
            HessianRTN(wbits=4),
            calibration,
            show_progress=False,
        )
        results = runner.run()
        assert len(results) >= 8  # two blocks, at least four Linears each
        out = runner.save_quantized_model(tmp_path / "q")
        loaded, _ = load_quantized_model(out)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc.get("conv1d_as_linear", False) == (kind == "gpt2")
    assert qc["calibration_hash"] == runner.calibration.sha256
    ids = _ids(20)
    expected = _logits(runner.create_quantized_model(), ids)
    assert (_logits(loaded, ids) - expected).abs().max().item() <= 1e-5


def test_runner_evaluates_the_dequantized_packed_and_original_models():
    from onecomp_core.seed_api import Runner

    runner = Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"), RTN(wbits=4), show_progress=False
    )
    runner.run()
    text = ASSETS / "text" / "tinystories-valid-excerpt.txt"
    ppl = {
        m: runner.calculate_perplexity(text, model=m, max_tokens=2048).ppl
        for m in ("dequantized", "quantized", "original")
    }
    assert ppl["quantized"] == pytest.approx(ppl["dequantized"], rel=1e-6)
    assert ppl["original"] < ppl["dequantized"]
    with pytest.raises(ValueError, match="expected 'dequantized'"):
        runner.calculate_perplexity(text, model="fp8")
