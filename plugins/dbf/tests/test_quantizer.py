"""The DBF quantizer: parameters, per-layer bits, results, fallback, inference layers."""

import math

import pytest
import torch
from torch import nn

from onecomp_core import create_quantizer
from onecomp_dbf import DBF, DBFResult, DoubleBinaryLinear

FAST = dict(iters=20, finetune_steps=0, flag_hessian=False)


def test_registered_under_dbf_with_seed_defaults():
    q = create_quantizer("dbf")
    assert isinstance(q, DBF)
    assert (q.target_bits, q.reg, q.balance_iters, q.balance_alpha, q.balance_mode) == (
        1.5,
        0.03,
        40,
        1.0,
        "l1",
    )
    assert q.mlp_target_bits is None and q.module_target_bits is None
    assert q.weighting == "activation" and q.clamp_k is False
    assert q.statistics == "full"  # the full H refits the vectors
    assert DBF(flag_hessian=False).statistics == "diag"  # the fit itself needs only diag(H)
    assert q.wants_fp_stream and not DBF(finetune_steps=0).wants_fp_stream
    # model-level distillation is part of fine-tuning: off in the layer-wise mode unless asked
    assert q.distill_steps is None and q.resolved_distill_steps() == 400
    assert DBF(finetune_steps=0).resolved_distill_steps() == 0
    assert DBF(finetune_steps=0, distill_steps=7).resolved_distill_steps() == 7
    assert DBF(distill_steps=0).resolved_distill_steps() == 0
    assert DBF(weighting="none").statistics == "none"


def test_validation_lists_every_problem():
    with pytest.raises(ValueError) as err:
        DBF(
            target_bits=0,
            iters=0,
            reg=-1,
            balance_iters=0,
            balance_alpha=0,
            balance_mode="l3",
            use_balancing=True,
            mlp_target_bits=0.5,
            module_target_bits={"x": 0.2, 3: 2.0},
            weighting="hessian",
            finetune_steps=-1,
            finetune_lr=0,
            finetune_sign_lr=-1,
            hessian_damp=2,
            hessian_admm="yes",
            distill_steps=-1,
            distill_lr=0,
            distill_sign_lr=-1,
        ).validate_params()
    text = str(err.value)
    for name in (
        "target_bits=0",
        "iters=0",
        "reg=-1",
        "balance_iters=0",
        "balance_alpha=0",
        "balance_mode='l3'",
        "mlp_target_bits=0.5",
        "module_target_bits['x']=0.2",
        "module_target_bits key 3",
        "weighting='hessian'",
        "finetune_steps=-1",
        "finetune_lr=0",
        "finetune_sign_lr=-1",
        "hessian_damp=2",
        "hessian_admm='yes'",
        "distill_steps=-1",
        "distill_lr=0",
        "distill_sign_lr=-1",
    ):
        assert name in text, name
    DBF(use_balancing=False, balance_mode="bad").validate_params()  # ignored when off


def test_resolve_bits_priority():
    module = {"model.layers.0.mlp.up_proj": 3.0}
    assert DBF.resolve_bits("model.layers.0.mlp.up_proj", 1.5, 2.0, module) == 3.0
    assert DBF.resolve_bits("model.layers.0.mlp.down_proj", 1.5, 2.0, module) == 2.0
    assert DBF.resolve_bits("model.layers.0.self_attn.q_proj", 1.5, 2.0, module) == 1.5
    assert DBF.resolve_bits("model.layers.0.mlp.gate_proj", 1.5) == 1.5


def _linear(n=24, m=32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(m, n, bias=True)


def test_quantize_layer_result_and_inference_layer():
    q = DBF(target_bits=2.0, **FAST)
    lin = _linear()
    hdiag = torch.rand(32) + 0.5
    result = q.quantize(lin, "blk.mlp.up", hessian=hdiag)
    assert isinstance(result, DBFResult) and result.is_dbf_quantized
    k = result.mid_features
    assert k == round(2.0 * 24 * 32 / 56)
    assert result.dbf_A.dtype == torch.uint8 and result.dbf_B.dtype == torch.uint8
    assert result.dbf_Da.dtype == torch.float16 and result.dbf_mid.shape == (k,)
    cfg = result.layer_config()
    assert cfg["mid_features"] == k and abs(cfg["binary_bits"] / 2.0 - 1) < 0.02
    assert result.effective_bits(24, 32) == pytest.approx(cfg["total_bits"])
    layer = q.create_inference_layer(result, lin)
    assert isinstance(layer, DoubleBinaryLinear)
    x = torch.randn(5, 32)
    deq = result.compute_dequantized_weight().float()
    assert torch.allclose(
        layer(x), nn.functional.linear(x, deq, lin.bias.half().float()), atol=1e-3
    )
    row = {"in_features": 32, "out_features": 24, "bias": True, **cfg}
    empty = DBF.build_inference_layer(row)
    empty.load_state_dict(layer.state_dict())
    assert torch.equal(empty(x), layer(x))


def test_per_layer_bits_from_names():
    q = DBF(mlp_target_bits=2.0, **FAST)
    model = nn.ModuleDict({"mlp": _linear(), "attn": _linear()})
    layers = q.setup(model)
    for name, module in layers.items():
        q.quantize(module, name, hessian=torch.ones(32))
    assert q.results["mlp"].target_bits == 2.0 and q.results["attn"].target_bits == 1.5
    assert q.results["mlp"].mid_features > q.results["attn"].mid_features


def test_non_finite_layer_stays_dense_everywhere():
    q = DBF(**FAST)
    lin = _linear()
    lin.weight.data[3, 4] = math.nan
    result = q.quantize(lin, "bad", hessian=torch.ones(32))
    assert not result.is_dbf_quantized and result.fallback
    assert result.dbf_A is None
    assert torch.allclose(
        result.compute_dequantized_weight(), lin.weight.data.half(), equal_nan=True
    )
    layer = q.create_inference_layer(result, lin)
    assert type(layer) is nn.Linear and layer.weight.dtype == lin.weight.dtype
    row = {"in_features": 32, "out_features": 24, "bias": True, **result.layer_config()}
    empty = DBF.build_inference_layer(row)
    assert type(empty) is nn.Linear and empty.weight.dtype == torch.float32
    empty.load_state_dict(layer.state_dict())
    assert result.effective_bits(24, 32) == 16.0


def test_nan_statistics_fall_back_too():
    q = DBF(**FAST)
    result = q.quantize(_linear(), "x", hessian=torch.full((32,), math.nan))
    assert not result.is_dbf_quantized


def test_results_round_trip_through_storage(tmp_path):
    q = DBF(**FAST)
    q.quantize(_linear(), "good", hessian=torch.ones(32))
    bad = _linear()
    bad.weight.data.fill_(math.inf)
    q.quantize(bad, "bad", hessian=torch.ones(32))
    q.save_results(tmp_path / "r")
    again = DBF(**FAST)
    again.load_results(tmp_path / "r")
    for name in ("good", "bad"):
        assert torch.equal(
            again.results[name].compute_dequantized_weight(),
            q.results[name].compute_dequantized_weight(),
        )
    assert again.results["bad"].is_dbf_quantized is False


def test_activation_gradient_needs_statistics():
    q = DBF(weighting="activation_gradient", **FAST)
    q.validate_params()  # accepted as a value
    with pytest.raises(ValueError, match="gradient statistics"):
        q.setup(nn.ModuleDict({"a": _linear()}))
    q.gradient_statistics = {"a": torch.rand(24) + 0.1}
    layers = q.setup(nn.ModuleDict({"a": _linear()}))
    assert q.quantize(layers["a"], "a", hessian=torch.ones(32)).is_dbf_quantized


def test_full_hessian_refit_lowers_output_error():
    torch.manual_seed(0)
    lin = _linear(32, 32)
    mix = torch.randn(32, 32) * 0.5 + torch.eye(32)
    x = torch.randn(4096, 32) @ mix  # correlated inputs
    h = 2 * x.t() @ x / x.shape[0]

    def err(q):
        deq = q.quantize(
            lin, "l", hessian=h if q.flag_hessian else h.diagonal()
        ).compute_dequantized_weight()
        return (x @ (lin.weight.data - deq.float()).t()).pow(2).sum().item()

    assert err(DBF(**{**FAST, "flag_hessian": True})) < err(DBF(**FAST))
