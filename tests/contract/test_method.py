"""The plugin contract: parameters as data, needs, the quantize wrapper, results, seed names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from onecomp_core import QuantizationResult, Quantizer
from onecomp_core.contract import ConfigError, LayerJob, Method, Needs
from onecomp_core.engine import quant_error
from onecomp_core.engine.walk import choose_layers
from onecomp_core.rtn import RTN, RTNResult
from onecomp_core.seed_api import ResultLoader, apply_results_to_model, save_results
from onecomp_core.testing import HessianRTN, tiny_model


def test_name_defaults_to_the_class_name():
    assert RTN().name == "RTN"
    assert RTN(name="rtn-4bit").name == "rtn-4bit"


def test_seed_api_defaults():
    q = RTN()
    assert q.exclude_layer_names == ["lm_head"]
    assert q.target_layer_types == (nn.Linear,)
    assert (q.num_layers, q.calc_quant_error) == (None, False)
    assert q.needs().precision == torch.float32
    assert q.include_layer_names == [] and q.include_layer_keywords == []
    assert RTN().exclude_layer_names is not q.exclude_layer_names  # no shared mutable default


def test_validation_reports_every_problem_in_one_message():
    q = RTN(wbits=9, groupsize=0, sym="yes", num_layers=0, include_layer_keywords="mlp")
    with pytest.raises(ValueError) as err:
        q.validate()
    message = str(err.value)
    assert message.startswith("invalid parameters for RTN:")
    for fragment in ("wbits=9", "groupsize=0", "sym='yes'", "num_layers=0", "'mlp'"):
        assert fragment in message
    assert message.count("\n  - ") == 5


def test_a_missing_list_is_a_validation_error_not_a_crash():
    with pytest.raises(ValueError, match="include_layer_names=None: expected a list of strings"):
        RTN(include_layer_names=None).validate()


def test_valid_parameters_pass():
    RTN(wbits=2, groupsize=1, sym=False, num_layers=1).validate()


def test_needs_say_which_statistics_the_engine_collects():
    assert RTN().needs() == Needs()
    assert not RTN().needs().calibration
    needs = HessianRTN().needs()
    assert (needs.inputs, needs.sequential, needs.calibration) == ("full", True, True)


def test_quantizer_and_quantization_result_are_the_seed_names_of_the_contract():
    assert Quantizer is Method and issubclass(RTNResult, QuantizationResult)


def test_a_method_without_its_hooks_says_so():
    @dataclass
    class Incomplete(Method):
        method: ClassVar[str] = "incomplete"

    with pytest.raises(NotImplementedError):
        Incomplete().quantize_layer(LayerJob("fc", nn.Linear(2, 2)))
    with pytest.raises(NotImplementedError, match="cannot rebuild"):
        Incomplete.empty_layer({"in_features": 1, "out_features": 1})
    with pytest.raises(NotImplementedError, match="no bit-width"):
        Incomplete().with_bits(4)


def test_to_dict_uses_the_declared_disk_names_and_from_dict_inverts_it():
    q = RTN(wbits=3, groupsize=32, sym=False)
    config = q.to_dict()
    assert config == {"bits": 3, "group_size": 32, "sym": False, "config_version": 1}
    assert RTN.from_dict(config) == q
    assert RTN.from_dict({**config, "added_by_a_newer_version": 1}) == q


def test_a_config_from_a_newer_version_is_refused():
    with pytest.raises(ConfigError, match="newer"):
        RTN.from_dict({"bits": 4, "config_version": 99})


def test_internal_fields_are_not_parameters():
    assert "target_layer_types" not in RTN.parameters()
    assert "name" not in RTN.parameters()
    assert {"wbits", "groupsize", "sym", "exclude_layer_names"} <= set(RTN.parameters())


def test_with_bits_and_bits_for_replace_parameter_name_guessing():
    assert RTN().with_bits(3).wbits == 3
    assert RTN(wbits=4, groupsize=32).bits_for((8, 64)) == pytest.approx(4 + 20 / 32)


# -- quantize(): timing, errors, bookkeeping ------------------------------------------
def test_quantize_times_the_layer_and_names_the_method():
    result = RTN(wbits=4).quantize(LayerJob("block.fc", nn.Linear(16, 8)))
    assert isinstance(result, RTNResult)
    assert result.quantization_time > 0
    assert result.method == "rtn"


def test_the_seed_call_builds_the_job():
    @dataclass
    class Recording(HessianRTN):
        def quantize_layer(self, job):
            self.__dict__["job"] = job
            return super().quantize_layer(job)

    layer, x = nn.Linear(16, 8), torch.randn(4, 16)
    hessian = 2 * x.T @ x / 4
    method = Recording(wbits=3)
    seed = method.quantize_layer(layer, None, hessian)  # the seed's positional call
    assert method.job.module is layer and method.job.hessian is hessian
    assert method.job.name == "" and method.job.input is None
    job = method.quantize_layer(LayerJob("fc", layer, hessian=hessian))
    assert method.job.name == "fc"
    assert torch.equal(seed.codes, job.codes)


def test_calc_quant_error_fills_weight_and_output_errors():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(64, 16)
    hessian = 2 * x.T @ x / x.shape[0]
    result = RTN(wbits=3).quantize(LayerJob("fc", layer, hessian=hessian))
    quant_error.fill_errors(result, layer.weight.data, hessian)
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
    results = {n: q.quantize(LayerJob(n, m)) for n, m in choose_layers(model, q).items()}
    apply_results_to_model(model, results)
    for name, result in results.items():
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
def test_result_loader_replays_saved_results(tmp_path):
    layer = nn.Linear(16, 8)
    result = RTN(wbits=4).quantize(LayerJob("fc", layer))
    save_results({"fc": result}, tmp_path / "results")
    loader = ResultLoader(results_path=str(tmp_path / "results"))
    assert list(loader.results) == ["fc"]
    assert loader.results["fc"].method == "rtn"
    packed = loader.inference_layer(loader.results["fc"], layer)
    assert torch.equal(packed.dequantize(), result.dequantize())
