"""Saving and loading: packed layers, strict checks, tied embeddings, every tiny architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp_core.calibration import CalibrationConfig
from onecomp_core.model_config import ModelConfig
from onecomp_core.packed_linear import PackedIntLinear
from onecomp_core.rtn import RTN
from onecomp_core.runner import Runner
from onecomp_core.serialization import load_quantized_model
from onecomp_core.testing import HessianRTN, HessianRTNPlugin, registered_plugin, tiny_model

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
STORIES = ASSETS / "stories260K"


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _ids(n: int = 48) -> torch.Tensor:
    return torch.arange(1, n + 1).remainder(500).unsqueeze(0)


@pytest.fixture(scope="module")
def rtn_runner():
    runner = Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"), RTN(wbits=4), show_progress=False
    )
    runner.run()
    return runner


def test_saved_folder_is_a_hugging_face_folder_with_a_layer_table(rtn_runner, tmp_path):
    out = rtn_runner.save_quantized_model(tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "rtn" and qc["format_version"] == 1
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
    assert (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".*partial*"))  # no temp folder left behind


def test_load_gives_the_same_logits_as_the_in_memory_model(rtn_runner, tmp_path):
    out = rtn_runner.save_quantized_model(tmp_path / "q")
    loaded, tokenizer = load_quantized_model(out)
    assert isinstance(loaded.get_submodule("model.layers.2.self_attn.k_proj"), PackedIntLinear)
    assert tokenizer is not None
    ids = _ids()
    fake_quant = _logits(rtn_runner.model, ids)
    packed = _logits(rtn_runner.create_quantized_model(), ids)
    reloaded = _logits(loaded, ids)
    assert (reloaded - packed).abs().max().item() <= 1e-5
    assert (reloaded - fake_quant).abs().max().item() <= 1e-5
    # the tied lm_head is stored once and tied again on load
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_saved_size_is_smaller_than_fp16(rtn_runner, tmp_path):
    out = rtn_runner.save_quantized_model(tmp_path / "q")
    size = (out / "model.safetensors").stat().st_size
    params = sum(p.numel() for p in rtn_runner.model.parameters())
    assert size < 0.6 * 2 * params


def test_refuses_an_existing_folder_unless_overwrite(rtn_runner, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        rtn_runner.save_quantized_model(out)
    rtn_runner.save_quantized_model(out, overwrite=True)
    assert (out / "config.json").is_file()


def test_truncated_weights_are_reported(rtn_runner, tmp_path):
    out = rtn_runner.save_quantized_model(tmp_path / "q")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_quantized_model(out)


def test_missing_tensor_is_reported_by_name(rtn_runner, tmp_path):
    from safetensors.torch import load_file, save_file

    out = rtn_runner.save_quantized_model(tmp_path / "q")
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


def test_missing_plugin_is_named(rtn_runner, tmp_path):
    out = rtn_runner.save_quantized_model(tmp_path / "q")
    config = json.loads((out / "config.json").read_text())
    for row in config["quantization_config"]["layers"].values():
        row["method"] = "dbf2"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown quantization method 'dbf2'"):
        load_quantized_model(out)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2", "bert"])
def test_tiny_architectures_quantize_save_and_load(kind, tmp_path):
    from transformers import AutoTokenizer

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
    ids = _ids(20)
    expected = _logits(runner.create_quantized_model(), ids)
    assert (_logits(loaded, ids) - expected).abs().max().item() <= 1e-5


def test_runner_evaluates_the_dequantized_packed_and_original_models(rtn_runner):
    text = ASSETS / "text" / "tinystories-valid-excerpt.txt"
    ppl = {
        m: rtn_runner.calculate_perplexity(text, model=m, max_tokens=2048).ppl
        for m in ("dequantized", "quantized", "original")
    }
    assert ppl["quantized"] == pytest.approx(ppl["dequantized"], rel=1e-6)
    assert ppl["original"] < ppl["dequantized"]
    with pytest.raises(ValueError, match="expected 'dequantized'"):
        rtn_runner.calculate_perplexity(text, model="fp8")
