"""The Quantizer contract: defaults, validation, statistics, the shared quantize() machinery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from onecomp_core import QuantizationResult, Quantizer
from onecomp_core.result_loader import ResultLoader
from onecomp_core.rtn import RTN, RTNResult
from onecomp_core.testing import tiny_model


def test_name_defaults_to_the_class_name():
    assert RTN().name == "RTN"
    assert RTN(name="rtn-4bit").name == "rtn-4bit"


def test_seed_api_defaults():
    q = RTN()
    assert q.exclude_layer_names == ["lm_head"]
    assert q.target_layer_types == (nn.Linear,)
    assert (q.num_layers, q.calc_quant_error, q.hessian_dtype) == (None, False, torch.float32)
    assert q.include_layer_names == [] and q.include_layer_keywords == []
    assert RTN().exclude_layer_names is not q.exclude_layer_names  # no shared mutable default


def test_validation_reports_every_problem_in_one_message():
    q = RTN(wbits=9, groupsize=0, sym="yes", num_layers=0, include_layer_keywords="mlp")
    with pytest.raises(ValueError) as err:
        q.validate_params()
    message = str(err.value)
    assert message.startswith("invalid parameters for RTN:")
    for fragment in ("wbits=9", "groupsize=0", "sym='yes'", "num_layers=0", "'mlp'"):
        assert fragment in message
    assert message.count("\n  - ") == 5


def test_a_missing_list_is_a_validation_error_not_a_crash():
    with pytest.raises(ValueError, match="include_layer_names=None: expected a list of strings"):
        RTN(include_layer_names=None).validate_params()


def test_valid_parameters_pass():
    RTN(wbits=2, groupsize=1, sym=False, num_layers=1).validate_params()


@pytest.mark.parametrize(
    ("flags", "statistics"),
    [
        ({"flag_calibration": False}, "none"),
        ({"flag_hessian": True}, "full"),
        ({"flag_hessian": False, "flag_xtx": True}, "diag"),
        ({"flag_hessian": False, "flag_xtx": False}, "none"),
    ],
)
def test_the_flags_decide_which_statistics_the_runner_collects(flags, statistics):
    assert RTN(**{"flag_calibration": True, **flags}).statistics == statistics


def test_rtn_needs_no_calibration():
    assert RTN().statistics == "none"


def test_a_quantizer_without_the_three_hooks_cannot_be_built():
    @dataclass
    class Incomplete(Quantizer):
        method: ClassVar[str] = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(NotImplementedError, match="cannot rebuild"):
        Incomplete.build_inference_layer({"in_features": 1, "out_features": 1})


def test_from_quant_config_inverts_get_quant_config():
    q = RTN(wbits=3, groupsize=32, sym=False)
    config = q.get_quant_config()
    assert config == {"bits": 3, "group_size": 32, "sym": False}
    assert RTN.from_quant_config(config) == q
    assert RTN.from_quant_config({**config, "added_by_a_newer_version": 1}) == q


def test_config_for_storage_names_the_method():
    assert RTN(wbits=8).config_for_storage() == {
        "quant_method": "rtn",
        "bits": 8,
        "group_size": -1,
        "sym": True,
    }


# -- quantize(): timing, errors, bookkeeping ------------------------------------------
def test_quantize_records_the_result_under_the_layer_name():
    layer = nn.Linear(16, 8)
    q = RTN(wbits=4)
    result = q.quantize(layer, "block.fc")
    assert isinstance(result, RTNResult)
    assert q.results == {"block.fc": result}
    assert result.quantization_time > 0
    assert result._method == "rtn"
    assert result.weight_squared_error is None  # calc_quant_error is off


def test_calc_quant_error_fills_weight_and_output_errors():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(64, 16)
    hessian = 2 * x.T @ x / x.shape[0]
    result = RTN(wbits=3, calc_quant_error=True).quantize(layer, "fc", hessian=hessian)
    w = layer.weight.data
    deq = result.compute_dequantized_weight().float()
    assert result.weight_squared_error == pytest.approx((w - deq).pow(2).sum().item(), rel=1e-5)
    assert result.mean_weight_squared_error == pytest.approx(result.weight_squared_error / 128)
    out_err = (x @ (w - deq).T).pow(2).sum().item() / x.shape[0]
    out_ref = (x @ w.T).pow(2).sum().item() / x.shape[0]
    assert result.output_squared_error == pytest.approx(out_err, rel=1e-4)
    assert result.relative_output_squared_error == pytest.approx(out_err / out_ref, rel=1e-4)
    assert 0 < result.relative_output_squared_error < 0.1


def test_apply_results_to_model_writes_the_dequantized_weights():
    model = tiny_model("llama")
    q = RTN(wbits=2, num_layers=2)
    for name, module in q.setup(model).items():
        q.quantize(module, name)
    q.apply_results_to_model(model)
    for name, result in q.results.items():
        weight = model.get_submodule(name).weight
        assert torch.equal(weight, result.compute_dequantized_weight().float())
    assert len(torch.unique(model.model.layers[0].self_attn.q_proj.weight[0])) <= 4


def test_base_result_returns_its_dense_weight_as_fp16():
    weight = torch.randn(3, 5)
    assert torch.equal(
        QuantizationResult(dequantized_weight=weight).compute_dequantized_weight(),
        weight.half(),
    )
    with pytest.raises(NotImplementedError, match="holds no dense weight"):
        QuantizationResult().compute_dequantized_weight()


# -- ResultLoader ----------------------------------------------------------------------
def test_result_loader_selects_nothing_and_refuses_to_quantize(tmp_path):
    source = RTN(wbits=4)
    source.quantize(nn.Linear(16, 8), "fc")
    source.save_results(tmp_path / "results")
    loader = ResultLoader(results_path=str(tmp_path / "results"))
    assert loader.setup(tiny_model("llama")) == {}
    assert list(loader.results) == ["fc"]
    with pytest.raises(RuntimeError, match="cannot quantize"):
        loader.quantize_layer(nn.Linear(16, 8))
    layer = loader.create_inference_layer(loader.results["fc"], nn.Linear(16, 8))
    assert torch.equal(layer.dequantize(), source.results["fc"].compute_dequantized_weight())
