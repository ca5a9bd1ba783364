"""The DBF method's per-layer hooks: results, bits, fallback, inference layers, weighting."""

import math

import pytest
import torch
from torch import nn

from onecomp_core.contract import LayerJob
from onecomp_dbf import DBF, DBFResult, DoubleBinaryLinear

FAST = dict(iters=20, finetune_steps=0, flag_hessian=False)


def _linear(n=24, m=32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(m, n, bias=True)


def _job(module, name="layer", hessian=None, gradients=None):
    return LayerJob(name=name, module=module, hessian=hessian, gradients=gradients)


def test_quantize_layer_result_and_inference_layer():
    q = DBF(target_bits=2.0, **FAST)
    lin = _linear()
    hdiag = torch.rand(32) + 0.5
    result = q.quantize(_job(lin, "blk.mlp.up", hdiag))
    assert isinstance(result, DBFResult) and result.is_dbf_quantized
    assert result.method == "dbf" and result.quantization_time > 0
    k = result.mid_features
    assert k == round(2.0 * 24 * 32 / 56)
    assert result.dbf_A.dtype == torch.uint8 and result.dbf_B.dtype == torch.uint8
    assert result.dbf_Da.dtype == torch.float16 and result.dbf_mid.shape == (k,)
    assert (result.iters, result.target_bits, result.weighting) == (20, 2.0, "activation")
    cfg = result.layer_config()
    assert cfg["mid_features"] == k and abs(cfg["binary_bits"] / 2.0 - 1) < 0.02
    assert result.effective_bits(24, 32) == pytest.approx(cfg["total_bits"])
    layer = q.inference_layer(result, lin)
    assert isinstance(layer, DoubleBinaryLinear)
    x = torch.randn(5, 32)
    deq = result.dequantize().float()
    assert torch.allclose(
        layer(x), nn.functional.linear(x, deq, lin.bias.half().float()), atol=1e-3
    )
    empty = DBF.empty_layer(result.row(24, 32, True))
    empty.load_state_dict(layer.state_dict())
    assert torch.equal(empty(x), layer(x))


def test_seed_call_with_module_and_hessian_still_works():
    q = DBF(**FAST)
    lin = _linear()
    seed_call = q.quantize_layer(lin, hessian=torch.ones(32))
    job_call = q.quantize_layer(_job(lin, "", torch.ones(32)))
    assert torch.equal(seed_call.dequantize(), job_call.dequantize())


def test_per_layer_bits_from_names():
    q = DBF(mlp_target_bits=2.0, **FAST)
    results = {n: q.quantize(_job(_linear(), n, torch.ones(32))) for n in ("mlp", "attn")}
    assert results["mlp"].target_bits == 2.0 and results["attn"].target_bits == 1.5
    assert results["mlp"].mid_features > results["attn"].mid_features


@pytest.mark.parametrize("clamp_k", [False, True])
def test_bits_for_is_what_the_result_reports(clamp_k):
    """AutoBit plans with bits_for: it must equal the stored bits of every shape and name."""
    q = DBF(target_bits=1.3, mlp_target_bits=2.0, module_target_bits={"x.q": 3.0}, clamp_k=clamp_k)
    q = q.replace(iters=1, finetune_steps=0, flag_hessian=False)
    for name in ("x.q", "x.mlp.up", "x.k"):
        for n, m in ((24, 32), (40, 8), (7, 13)):
            result = q.quantize(_job(_linear(n, m), name, torch.ones(m)))
            assert q.bits_for((n, m), name) == result.effective_bits(n, m)


def test_nominal_bits_and_with_bits():
    q = DBF(target_bits=1.5, mlp_target_bits=2.0)
    two = q.with_bits(2.5)
    assert isinstance(two, DBF) and two.nominal_bits == 2.5 and q.nominal_bits == 1.5
    assert two.mlp_target_bits == 2.0
    with pytest.raises(ValueError, match="target_bits=0"):
        q.with_bits(0)


def test_non_finite_layer_stays_dense_everywhere():
    q = DBF(**FAST)
    lin = _linear()
    lin.weight.data[3, 4] = math.nan
    result = q.quantize(_job(lin, "bad", torch.ones(32)))
    assert not result.is_dbf_quantized and result.fallback
    assert result.dbf_A is None
    assert torch.allclose(result.dequantize(), lin.weight.data.half(), equal_nan=True)
    layer = q.inference_layer(result, lin)
    assert type(layer) is nn.Linear and layer.weight.dtype == lin.weight.dtype
    empty = DBF.empty_layer(result.row(24, 32, True))
    assert type(empty) is nn.Linear and empty.weight.dtype == torch.float32
    empty.load_state_dict(layer.state_dict())
    assert result.effective_bits(24, 32) == 16.0


def test_nan_statistics_fall_back_too():
    q = DBF(**FAST)
    result = q.quantize(_job(_linear(), "x", torch.full((32,), math.nan)))
    assert not result.is_dbf_quantized


def test_results_round_trip_through_storage():
    q = DBF(**FAST)
    bad = _linear()
    bad.weight.data.fill_(math.inf)
    for name, module in (("good", _linear()), ("bad", bad)):
        result = q.quantize(_job(module, name, torch.ones(32)))
        again = DBFResult.from_state(*result.to_state())
        assert torch.equal(again.dequantize(), result.dequantize())
        assert again.is_dbf_quantized is (name == "good")


def test_activation_gradient_weights_rows_by_the_output_gradient_moments():
    q = DBF(weighting="activation_gradient", **FAST)
    q.validate()
    lin = _linear()
    with pytest.raises(ValueError, match="output-gradient moments"):
        q.quantize(_job(lin, "a", torch.ones(32)))
    b = torch.rand(24, dtype=torch.float64) + 0.1
    b[5] = 100.0  # one output the loss is very sensitive to
    weighted = q.quantize(_job(lin, "a", torch.ones(32), gradients=b))
    plain = DBF(**FAST).quantize(_job(lin, "a", torch.ones(32)))
    assert weighted.is_dbf_quantized and weighted.weighting == "activation_gradient"

    def row_error(result):
        return (lin.weight.data - result.dequantize().float()).pow(2).sum(1)

    assert row_error(weighted)[5] < row_error(plain)[5]


def test_full_hessian_refit_lowers_output_error():
    torch.manual_seed(0)
    lin = _linear(32, 32)
    mix = torch.randn(32, 32) * 0.5 + torch.eye(32)
    x = torch.randn(4096, 32) @ mix  # correlated inputs
    h = 2 * x.t() @ x / x.shape[0]

    def err(q):
        stats = h if q.needs().inputs == "full" else h.diagonal()
        deq = q.quantize(_job(lin, "l", stats)).dequantize()
        return (x @ (lin.weight.data - deq.float()).t()).pow(2).sum().item()

    assert err(DBF(**{**FAST, "flag_hessian": True})) < err(DBF(**FAST))


def test_a_handed_over_weight_waits_on_disk_through_the_fit(monkeypatch):
    """With the job handed over (the engine's solves), the module forgets W and the fit reads
    it from disk for its target and its refit: not resident through the ADMM, where the two
    targets (n × m and its m × n transform) take turns on disk too. Same factors."""
    import gc

    from onecomp_dbf import factorization

    torch.manual_seed(0)
    n, m = 40, 56
    x = torch.randn(2048, m) @ (torch.randn(m, m) * 0.3 + torch.eye(m))
    h = 2 * x.t() @ x / x.shape[0]
    q = DBF(**{**FAST, "flag_hessian": True})
    seen: list[int] = []
    admm = factorization._admm_update

    def counting(*args, **kwargs):  # distinct (n × m) and (m × n) buffers: W, the targets
        shaped = [o for o in gc.get_objects() if type(o) in (torch.Tensor, nn.Parameter)]
        shaped = [t for t in shaped if t.shape in ((n, m), (m, n))]
        seen.append(len({t.untyped_storage().data_ptr() for t in shaped}))
        return admm(*args, **kwargs)

    monkeypatch.setattr(factorization, "_admm_update", counting)
    out = {}
    for hand in (False, True):
        seen.clear()
        lin = _linear(n, m)
        out[hand] = (q.quantize(LayerJob("l", lin, h.clone(), hands_over=hand)), list(seen))
        assert lin.weight.numel() == (0 if hand else n * m)  # handed over: the module forgot W
    assert out[False][1] and set(out[False][1]) == {3} and set(out[True][1]) == {1}
    for key in ("dbf_Da", "dbf_A", "dbf_mid", "dbf_B", "dbf_Db"):
        assert torch.equal(getattr(out[False][0], key), getattr(out[True][0], key))


def test_the_refit_holds_no_dead_matrix_beside_its_in_by_in_gram(monkeypatch):
    """The Hessian refit needs W only for W·H: handed over, W is read from disk for that
    product and is not resident beside the b-step's (in × in) Gram matrix; nor are the last
    round's c-step matrices (diag(a)·S_A, S_B·diag(b)). Same factors either way."""
    import gc

    from onecomp_dbf import refit

    torch.manual_seed(0)
    n, m = 40, 56
    x = torch.randn(2048, m) @ (torch.randn(m, m) * 0.3 + torch.eye(m))
    h = 2 * x.t() @ x / x.shape[0]
    q = DBF(**{**FAST, "flag_hessian": True})
    seen: list[dict[tuple, int]] = []
    solve = refit._solve_symmetric_

    def counting(*args, **kwargs):  # distinct buffers alive, by shape
        ptrs: dict[tuple, set] = {}
        for o in gc.get_objects():
            if type(o) in (torch.Tensor, nn.Parameter) and o.dim() == 2:
                ptrs.setdefault(tuple(o.shape), set()).add(o.untyped_storage().data_ptr())
        seen.append({shape: len(p) for shape, p in ptrs.items()})
        return solve(*args, **kwargs)

    monkeypatch.setattr(refit, "_solve_symmetric_", counting)
    out = {}
    for hand in (False, True):
        seen.clear()
        lin = _linear(n, m)
        out[hand] = (q.quantize(LayerJob("l", lin, h.clone(), hands_over=hand)), list(seen))
    k = out[True][0].mid_features
    assert k not in (n, m) and len(out[True][1]) == refit.REFIT_ROUNDS
    # W·H, and W when the module holds it
    assert [c[(n, m)] for c in out[False][1]] == [2] * refit.REFIT_ROUNDS
    assert [c[(n, m)] for c in out[True][1]] == [1] * refit.REFIT_ROUNDS
    # S_B alone (S_B·diag(b) of the round before is gone), S_A alone
    assert all(c[(k, m)] == 1 and c[(n, k)] == 1 for c in out[True][1])
    for key in ("dbf_Da", "dbf_A", "dbf_mid", "dbf_B", "dbf_Db"):
        assert torch.equal(getattr(out[False][0], key), getattr(out[True][0], key))
