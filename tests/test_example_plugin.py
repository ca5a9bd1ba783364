"""The third-party example plugin, reached only through its entry point and the registry.

This module never imports ``onecomp_example``: if the core can find, run,
store and rebuild the method by name, a third-party distribution can plug in.
"""

from __future__ import annotations

import importlib.metadata as md

import pytest
import torch
import torch.nn.functional as F

from onecomp_core import create_quantizer, get_quantizer, list_quantizers, plugins
from onecomp_core.results_io import load_results, save_results
from onecomp_core.testing import tiny_model

pytestmark = pytest.mark.usefixtures("fresh_registry")

LAYER = "model.layers.1.mlp.down_proj"


@pytest.fixture(autouse=True)
def installed() -> None:
    names = [ep.name for ep in md.entry_points(group="onecomp", name="ternary")]
    assert names == ["ternary"], (
        "the example plugin is not installed: pip install -e examples/onecomp-example-plugin"
    )


@pytest.fixture
def quantized():
    model = tiny_model("llama")
    q = create_quantizer("ternary", include_layer_names=[LAYER])
    (name, module), *rest = q.setup(model).items()
    assert name == LAYER and rest == []
    return q, module, q.quantize(module, name)


def test_the_method_is_discovered_through_its_entry_point():
    assert "ternary" in list_quantizers()
    cls = get_quantizer("ternary")
    assert cls.__module__ == "onecomp_example.quantizer"
    info = {i.name: i for i in plugins.plugin_report()}["ternary"]
    assert (info.distribution, info.status, info.methods) == (
        "onecomp-example-plugin",
        "ok",
        ["ternary"],
    )


def test_it_quantizes_a_layer_to_three_levels_per_row(quantized):
    q, module, result = quantized
    w = module.weight.data
    delta = 0.7 * w.abs().mean(dim=1, keepdim=True)
    keep = w.abs() > delta
    alpha = (w.abs() * keep).sum(dim=1) / keep.sum(dim=1)
    expected = (torch.sign(w) * keep * alpha.half().float().unsqueeze(1)).half()
    deq = result.compute_dequantized_weight()
    assert torch.equal(deq, expected)
    for row in deq:
        assert len(torch.unique(row)) <= 3
    assert q.results[LAYER] is result and result._method == "ternary"


def test_its_inference_layer_computes_with_the_dequantized_weight(quantized):
    q, module, result = quantized
    layer = q.create_inference_layer(result, module)
    x = torch.randn(4, module.in_features)
    assert torch.equal(layer(x), F.linear(x, result.compute_dequantized_weight().float()))
    assert layer.qweight.dtype == torch.int32
    assert layer.qweight.shape == (32, 5)  # 72 inputs × 2 bits = 144 bits → 5 words per row


def test_its_inference_layer_can_be_rebuilt_empty_and_loaded(quantized):
    q, module, result = quantized
    packed = q.create_inference_layer(result, module)
    row = {"in_features": 72, "out_features": 32, "bias": False, **result.layer_config()}
    empty = get_quantizer("ternary").build_inference_layer(row)
    empty.load_state_dict(packed.state_dict())
    x = torch.randn(3, 72)
    assert torch.equal(empty(x), packed(x))


def test_its_results_round_trip_through_storage(tmp_path, quantized):
    q, _, result = quantized
    save_results(q.results, tmp_path / "saved")
    loaded = load_results(tmp_path / "saved")[LAYER]
    assert type(loaded) is type(result)
    assert torch.equal(loaded.signs, result.signs) and torch.equal(loaded.scales, result.scales)


def test_its_parameters_are_validated_and_its_config_round_trips():
    with pytest.raises(ValueError, match="threshold_ratio=-1"):
        create_quantizer("ternary", threshold_ratio=-1)
    q = create_quantizer("ternary", threshold_ratio=0.5)
    assert q.config_for_storage() == {"quant_method": "ternary", "threshold_ratio": 0.5}
    assert type(q).from_quant_config(q.get_quant_config()) == q
    assert q.statistics == "none"
