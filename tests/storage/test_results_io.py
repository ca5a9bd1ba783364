"""Saved results: safetensors for tensors, JSON for the rest, never pickle; bit-exact."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from onecomp_core import registry
from onecomp_core.contract import LayerJob
from onecomp_core.rtn import RTN, RTNResult
from onecomp_core.storage.results_io import load_results, save_results


@pytest.fixture
def results() -> dict[str, RTNResult]:
    """Results of three differently configured RTN runs, errors and a fallback note included."""
    torch.manual_seed(0)
    out = {}
    for name, (bits, groupsize, sym) in {
        "model.layers.0.mlp.down_proj": (3, 32, False),
        "model.layers.0.self_attn.q_proj": (4, -1, True),
        "lm_head": (8, 7, True),
    }.items():
        q = RTN(wbits=bits, groupsize=groupsize, sym=sym)
        out[name] = q.quantize(LayerJob(name, nn.Linear(50, 12)))
        out[name].weight_squared_error = 0.1 + 0.2 * bits  # a float JSON must keep exactly
    out["lm_head"].fallback = "kept as a test of string fields"
    return out


def assert_same(a: RTNResult, b: RTNResult) -> None:
    assert type(a) is type(b)
    for field in ("codes", "scales", "zeros"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and torch.equal(x, y), field
    for field in ("bits", "groupsize", "sym", "fallback", "quantization_time"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.weight_squared_error == b.weight_squared_error  # floats survive JSON exactly
    assert torch.equal(a.dequantize(), b.dequantize())


def test_round_trip_is_bit_exact(tmp_path, results):
    save_results(results, tmp_path / "saved")
    loaded = load_results(tmp_path / "saved")
    assert list(loaded) == list(results)
    for name in results:
        assert_same(results[name], loaded[name])
        assert loaded[name].method == "rtn"


def test_the_folder_holds_only_safetensors_and_json(tmp_path, results):
    save_results(results, tmp_path / "saved")
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == ["results.json", "results.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temp folder left
    manifest = json.loads((tmp_path / "saved" / "results.json").read_text())
    assert manifest["layers"]["lm_head"]["method"] == "rtn"
    assert manifest["layers"]["lm_head"]["class"] == "RTNResult"


def test_loading_never_unpickles(tmp_path, results, monkeypatch):
    save_results(results, tmp_path / "saved")

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading results")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load_results(tmp_path / "saved")
    assert_same(results["lm_head"], loaded["lm_head"])


def test_saving_again_replaces_the_folder(tmp_path, results):
    save_results(results, tmp_path / "saved")
    save_results({"lm_head": results["lm_head"]}, tmp_path / "saved")
    assert list(load_results(tmp_path / "saved")) == ["lm_head"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_a_result_built_by_hand_is_saved_under_its_method(tmp_path):
    result = RTN(wbits=2).quantize_layer(nn.Linear(8, 4))
    assert result.method == ""
    save_results({"fc": result}, tmp_path / "saved")
    assert load_results(tmp_path / "saved")["fc"].method == "rtn"


def test_a_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json is missing"):
        load_results(tmp_path)


def saved_and_edited(results, folder, old: str, new: str):
    """``results`` saved in ``folder``, with ``old`` replaced by ``new`` in the manifest."""
    save_results(results, folder)
    manifest = folder / "results.json"
    manifest.write_text(manifest.read_text().replace(old, new))
    return folder


def test_results_of_an_uninstalled_method_name_the_method(tmp_path, results, fresh_registry):
    saved_and_edited(results, tmp_path / "saved", '"rtn"', '"gptq2"')
    with pytest.raises(registry.UnknownMethodError, match="'gptq2'"):
        load_results(tmp_path / "saved")


def test_a_changed_result_class_is_refused(tmp_path, results):
    saved_and_edited(results, tmp_path / "saved", '"RTNResult"', '"OldRTNResult"')
    with pytest.raises(ValueError, match="saved as OldRTNResult"):
        load_results(tmp_path / "saved")


def test_results_saved_before_method_was_a_field_still_load(tmp_path, results):
    save_results(results, tmp_path / "saved")
    manifest = tmp_path / "saved" / "results.json"
    data = json.loads(manifest.read_text())
    for entry in data["layers"].values():
        del entry["fields"]["method"]  # the layout of the seed's results
    manifest.write_text(json.dumps(data))
    loaded = load_results(tmp_path / "saved")
    for name in results:
        assert_same(results[name], loaded[name])
        assert loaded[name].method == "rtn"


def test_a_newer_results_format_is_named(tmp_path, results):
    saved_and_edited(results, tmp_path / "saved", '"format_version": 1', '"format_version": 7')
    with pytest.raises(ValueError, match="results format_version 7 is newer"):
        load_results(tmp_path / "saved")
