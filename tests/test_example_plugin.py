"""The third-party example plugin, reached only through its entry point and the registry.

This module never imports ``onecomp_example``: if the core can find, run,
store and rebuild the method by name, read calibration text through the
plugin's source and write a model through its format, a third-party
distribution can plug in.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onecomp_core import (
    CalibrationConfig,
    ModelConfig,
    Runner,
    load_quantized_model,
    load_results,
    registry,
    save_results,
)
from onecomp_core.cli import main
from onecomp_core.contract import Artifact, ConfigError, LayerJob, Needs
from onecomp_core.data.calibration import cut_windows
from onecomp_core.testing import HessianRTN, HessianRTNPlugin, registered_plugin, tiny_model

pytestmark = pytest.mark.usefixtures("fresh_registry")

LAYER = "model.layers.1.mlp.down_proj"
ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
STORIES = ASSETS / "stories260K"


@pytest.fixture(autouse=True)
def installed() -> None:
    names = [ep.name for ep in md.entry_points(group="onecomp", name="ternary")]
    assert names == ["ternary"], (
        "the example plugin is not installed: pip install -e examples/onecomp-example-plugin"
    )


@pytest.fixture
def quantized():
    model = tiny_model("llama")
    method = registry.create_method("ternary")
    module = model.get_submodule(LAYER)
    return method, module, method.quantize(LayerJob(LAYER, module))


# -- the method --------------------------------------------------------------------------
def test_the_plugin_is_discovered_through_its_entry_point():
    cls = registry.get_method("ternary")
    assert cls.__module__ == "onecomp_example.method"
    info = {i.name: i for i in registry.plugin_report()}["ternary"]
    assert (info.distribution, info.status) == ("onecomp-example-plugin", "ok")
    assert (info.methods, info.sources, info.formats) == (["ternary"], ["csv"], ["npz"])


def test_it_quantizes_a_layer_to_three_levels_per_row(quantized):
    _, module, result = quantized
    w = module.weight.data
    delta = 0.7 * w.abs().mean(dim=1, keepdim=True)
    keep = w.abs() > delta
    alpha = (w.abs() * keep).sum(dim=1) / keep.sum(dim=1)
    expected = (torch.sign(w) * keep * alpha.half().float().unsqueeze(1)).half()
    deq = result.dequantize()
    assert torch.equal(deq, expected)
    for row in deq:
        assert len(torch.unique(row)) <= 3
    assert result.method == "ternary"
    assert result.row(32, 72, False) == {
        "method": "ternary",
        "in_features": 72,
        "out_features": 32,
        "bias": False,
        "bits": 2,
        "effective_bits": round(2 + 16 / 72, 6),
    }


def test_its_inference_layer_computes_with_the_dequantized_weight(quantized):
    method, module, result = quantized
    layer = method.inference_layer(result, module)
    x = torch.randn(4, module.in_features)
    assert torch.equal(layer(x), F.linear(x, result.dequantize().float()))
    assert layer.qweight.dtype == torch.int32
    assert layer.qweight.shape == (32, 5)  # 72 inputs × 2 bits = 144 bits → 5 words per row


def test_its_inference_layer_can_be_rebuilt_empty_and_loaded(quantized):
    method, module, result = quantized
    packed = method.inference_layer(result, module)
    empty = registry.get_method("ternary").empty_layer(result.row(32, 72, False))
    empty.load_state_dict(packed.state_dict())
    x = torch.randn(3, 72)
    assert torch.equal(empty(x), packed(x))


def test_its_results_round_trip_through_storage(tmp_path, quantized):
    _, _, result = quantized
    save_results({LAYER: result}, tmp_path / "saved")
    loaded = load_results(tmp_path / "saved")[LAYER]
    assert type(loaded) is type(result)
    assert torch.equal(loaded.signs, result.signs) and torch.equal(loaded.scales, result.scales)


def test_its_parameters_are_validated_and_its_config_round_trips():
    with pytest.raises(ConfigError, match="threshold_ratio=-1"):
        registry.create_method("ternary", threshold_ratio=-1)
    method = registry.create_method("ternary", threshold_ratio=0.5)
    assert method.to_dict() == {"threshold_ratio": 0.5, "config_version": 1}
    assert type(method).from_dict(method.to_dict()) == method
    assert method.needs() == Needs() and not method.needs().calibration
    assert method.bits_for((32, 72)) == 2 + 16 / 72


# -- the calibration source ----------------------------------------------------------------
def test_the_csv_source_reads_the_text_column(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text('id,text\n1,"One, two: a line."\n2,\n3,"Two\nlines."\n', encoding="utf-8")
    name, load = registry.source_for(str(path))
    assert name == "csv"
    assert registry.source_for(path)[0] == "csv"
    assert load(str(path), None, None, None) == ["One, two: a line.", "Two\nlines."]


def test_the_csv_source_names_a_missing_column_or_file(tmp_path):
    path = tmp_path / "calib.csv"
    path.write_text("id,body\n1,hello\n", encoding="utf-8")
    _, load = registry.source_for(str(path))
    with pytest.raises(ValueError, match="no 'text' column \\(columns: id, body\\)"):
        load(str(path), None, None, None)
    with pytest.raises(ValueError, match="dataset file not found: .*missing.csv"):
        CalibrationConfig(dataset=str(tmp_path / "missing.csv"))


def test_the_csv_source_calibrates_a_run(tmp_path):
    """A method that needs statistics, calibrated on the csv's documents, end to end."""
    lines = (ASSETS / "text" / "wikitext2-valid.tokens.txt").read_text().splitlines()
    documents = [line for line in lines if line.strip()][:60]
    path = tmp_path / "calib.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["title", "text"])
        writer.writerows([f"doc {i}", doc] for i, doc in enumerate(documents))
    config = CalibrationConfig(
        dataset=str(path), max_length=32, num_calibration_samples=4, batch_size=4
    )
    with registered_plugin(HessianRTNPlugin()):
        runner = Runner(
            ModelConfig(path=STORIES, dtype="float32", device="cpu"), HessianRTN(), config
        )
        results = runner.run()
    assert len(results) == 5 * 7 and runner.calibration.source == str(path)
    assert torch.equal(
        runner.calibration.input_ids, cut_windows(documents, runner.tokenizer, config)
    )


# -- the export format ---------------------------------------------------------------------
def test_the_npz_format_writes_every_tensor_and_the_rows(tmp_path, quantized):
    method, _, _ = quantized
    model = tiny_model("llama")
    rows = {}
    for name in (LAYER, "model.layers.0.self_attn.q_proj"):
        linear = model.get_submodule(name)
        result = method.quantize(LayerJob(name, linear))
        rows[name] = result.row(linear.out_features, linear.in_features, False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, method.inference_layer(result, linear))
    config = {**method.to_dict(), "quant_method": "ternary", "layers": rows}
    save = registry.get_format("npz")
    save(Artifact(model=model, rows=rows, quantization_config=config), tmp_path / "out")
    with np.load(tmp_path / "out" / "model.npz") as saved:
        state = model.state_dict()
        assert set(saved.files) == {*state, "__rows__", "__quantization_config__"}
        for key, tensor in state.items():
            assert np.array_equal(saved[key], tensor.numpy()), key
        assert saved[f"{LAYER}.qweight"].dtype == np.int32
        assert json.loads(str(saved["__rows__"])) == rows
        assert json.loads(str(saved["__quantization_config__"])) == config
    save(Artifact(model=model, rows=rows, quantization_config=config), tmp_path / "m.npz")
    assert (tmp_path / "m.npz").is_file()


# -- through the command line ----------------------------------------------------------------
def test_quantize_load_and_export_through_the_cli(tmp_path):
    folder, archive = tmp_path / "ternary", tmp_path / "model.npz"
    assert (
        main(["quantize", str(STORIES), "--method", "ternary", "--out", str(folder), "--quiet"])
        == 0
    )
    model, _ = load_quantized_model(folder)
    layer = model.get_submodule(LAYER)
    assert type(layer).__name__ == "TernaryLinear"
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "onecomp" and qc["method"] == "ternary"
    assert qc["threshold_ratio"] == 0.7
    assert main(["export", str(folder), "--format", "npz", str(archive)]) == 0
    with np.load(archive) as saved:
        state = model.state_dict()
        assert set(saved.files) == {*state, "__rows__", "__quantization_config__"}
        for key, tensor in state.items():
            assert np.array_equal(saved[key], tensor.numpy()), key
        assert json.loads(str(saved["__rows__"]))[LAYER] == qc["layers"][LAYER]
