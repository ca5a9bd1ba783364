"""RTN against an independent, deliberately plain per-row computation, and its packed layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onecomp_core import registry
from onecomp_core.contract import ConfigError, LayerJob, Needs
from onecomp_core.kernels import PackedIntLinear
from onecomp_core.rtn import RTN, RTNResult
from onecomp_core.testing import linear_layers


def reference_rtn(w: torch.Tensor, bits: int, groupsize: int, sym: bool):
    """Plain loops, one (row, group) at a time, GPTQ conventions spelled out.

    Grid over [min(w, 0), max(w, 0)] (symmetric: [−amax, amax]); an all-zero
    span becomes [−1, 1]; the scale is stored (and used) as fp16; the zero
    point is 2^(b−1) when symmetric, round(−min/scale) otherwise;
    q = clamp(round(w/scale) + zero, 0, 2^b − 1).
    """
    maxq = 2**bits - 1
    rows, cols = w.shape
    size = cols if groupsize == -1 else groupsize
    starts = list(range(0, cols, size))
    codes = torch.zeros(rows, cols, dtype=torch.int64)
    scales = torch.zeros(rows, len(starts))
    zeros = torch.zeros(rows, len(starts), dtype=torch.int64)
    for r in range(rows):
        for g, start in enumerate(starts):
            seg = w[r, start : start + size].float()
            lo, hi = min(seg.min(), torch.tensor(0.0)), max(seg.max(), torch.tensor(0.0))
            if sym:
                hi = max(-lo, hi)
                lo = -hi
            if hi == lo:
                lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
            scale = ((hi - lo) / maxq).half().float()
            zero = (maxq + 1) // 2 if sym else int(min(max(torch.round(-lo / scale), 0), maxq))
            for c in range(seg.numel()):
                q = int(torch.round(seg[c] / scale)) + zero
                codes[r, start + c] = min(max(q, 0), maxq)
            scales[r, g], zeros[r, g] = scale, zero
    return codes, scales, zeros


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    """12 × 172 (172 is not a multiple of 32) with outliers, an all-zero and an all-positive row."""
    g = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(12, 172, generator=g) * torch.exp(0.5 * torch.randn(1, 172, generator=g))
    w[3] = 0
    w[5] = w[5].abs() + 0.01
    w[7, 100] = 0.9
    return w


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("bits", "groupsize"), [(2, -1), (3, 32), (4, -1), (4, 32), (8, 172)])
def test_codes_scales_and_zeros_match_the_reference(weight, bits, groupsize, sym):
    result = RTN(wbits=bits, groupsize=groupsize, sym=sym).quantize_layer(_linear(weight))
    codes, scales, zeros = reference_rtn(weight, bits, groupsize, sym)
    groups = 1 if groupsize == -1 else -(-172 // groupsize)
    assert result.codes.dtype == torch.uint8 and result.codes.shape == (12, 172)
    assert result.scales.dtype == torch.float16 and result.scales.shape == (12, groups)
    assert torch.equal(result.codes.long(), codes)
    assert torch.equal(result.scales.float(), scales)
    assert torch.equal(result.zeros.long(), zeros)


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_the_dequantized_weight_is_scale_times_code_minus_zero(weight, sym):
    result = RTN(wbits=3, groupsize=32, sym=sym).quantize_layer(_linear(weight))
    codes, scales, zeros = reference_rtn(weight, 3, 32, sym)
    group = torch.arange(172) // 32
    expected = scales[:, group] * (codes - zeros[:, group])
    deq = result.dequantize()
    assert deq.dtype == torch.float16
    assert torch.equal(deq, expected.half())
    assert torch.equal(deq[3], torch.zeros(172, dtype=torch.float16))  # a zero row stays zero


def test_asymmetric_error_is_at_most_half_a_step(weight):
    result = RTN(wbits=4, groupsize=32, sym=False).quantize_layer(_linear(weight))
    step = result.scales.float()[:, torch.arange(172) // 32]
    error = (weight - result.dequantize().float()).abs()
    assert (error <= step / 2 + 1e-3 * step).all()


def test_effective_bits_count_the_fp16_scale_and_zero_per_group():
    assert RTNResult(bits=4, groupsize=32).effective_bits(12, 172) == 4 + 20 / 32
    assert RTNResult(bits=3, groupsize=-1).effective_bits(12, 172) == 3 + 19 / 172


# -- the method's contract ------------------------------------------------------------
def test_rtn_is_the_builtin_method_and_needs_no_statistics(fresh_registry):
    assert registry.get_method("rtn") is RTN
    q = registry.create_method("rtn", wbits=3, groupsize=32)
    assert q.needs() == Needs() and not q.needs().calibration


def test_saved_config_keeps_the_gptq_style_keys_and_round_trips():
    q = RTN(wbits=3, groupsize=32, sym=False)
    assert q.to_dict() == {"bits": 3, "group_size": 32, "sym": False, "config_version": 1}
    assert RTN.from_dict(q.to_dict()) == q


def test_every_bad_parameter_in_one_error():
    with pytest.raises(ConfigError) as info:
        RTN(wbits=9, groupsize=0, sym="yes").validate()
    for expected in ("wbits=9", "groupsize=0", "sym='yes'"):
        assert expected in str(info.value)
    RTN(wbits=2, groupsize=-1).validate()
    RTN(wbits=8, groupsize=1).validate()


def test_bits_mean_wbits_and_effective_bits_count_the_group_metadata():
    q = RTN(wbits=4, groupsize=32)
    assert q.nominal_bits == 4.0
    assert q.with_bits(3) == RTN(wbits=3, groupsize=32) and q.wbits == 4
    assert q.with_bits(3.0).wbits == 3 and isinstance(q.with_bits(3.0).wbits, int)
    with pytest.raises(ConfigError, match="wbits=2.5"):
        q.with_bits(2.5)
    assert q.bits_for((12, 172)) == RTNResult(bits=4, groupsize=32).effective_bits(12, 172)
    assert RTN(wbits=3).bits_for((12, 172), "any.name") == 3 + 19 / 172


# -- the packed inference layer --------------------------------------------------------
@pytest.mark.parametrize(
    ("bits", "groupsize", "sym"), [(4, 32, False), (3, -1, True), (8, 7, False)]
)
def test_the_packed_layer_computes_f_linear_with_the_dequantized_weight(
    weight, bits, groupsize, sym
):
    linear = _linear(weight, bias=True)
    q = RTN(wbits=bits, groupsize=groupsize, sym=sym)
    result = q.quantize_layer(linear)
    layer = q.inference_layer(result, linear)
    assert isinstance(layer, PackedIntLinear)
    x = torch.randn(5, 172)
    expected = F.linear(x, result.dequantize().float(), linear.bias.detach().half().float())
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.codes(), result.codes)


def test_an_empty_layer_built_from_the_saved_row_loads_the_packed_tensors(weight):
    linear = _linear(weight, bias=True)
    q = RTN(wbits=3, groupsize=32, sym=False)
    result = q.quantize_layer(linear)
    packed = q.inference_layer(result, linear)
    row = result.row(12, 172, bias=True)
    assert row == {
        "method": "",
        "in_features": 172,
        "out_features": 12,
        "bias": True,
        "bits": 3,
        "groupsize": 32,
        "sym": False,
        "effective_bits": 3.59375,
    }
    empty = RTN().empty_layer(row)  # the loader calls it on a default-constructed RTN
    assert {k: v.shape for k, v in empty.state_dict().items()} == {
        k: v.shape for k, v in packed.state_dict().items()
    }
    empty.load_state_dict(packed.state_dict())
    x = torch.randn(2, 172)
    assert torch.equal(empty(x), packed(x))


# -- the real model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def stories(request) -> nn.Module:
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue("stories_path")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_8_bit_rtn_error_is_tiny_on_every_stories260k_layer(stories):
    layers = linear_layers(stories)
    assert len(layers) == 5 * 7
    for name, module in layers.items():
        w = module.weight.data
        r8 = RTN(wbits=8).quantize(LayerJob(name, module))
        r4 = RTN(wbits=4).quantize(LayerJob(name, module))
        assert r8.method == "rtn" and r8.quantization_time > 0
        assert _relative_error(w, r8) < 1e-4, name
        assert _relative_error(w, r4) > 50 * _relative_error(w, r8), name


@pytest.mark.parametrize("layer", ["mlp.down_proj", "self_attn.k_proj"])
def test_rtn_matches_the_reference_on_stories260k(stories, layer):
    """down_proj has 172 inputs (groups of 32 leave 12), k_proj 32 rows (GQA)."""
    weight = stories.get_submodule(f"model.layers.2.{layer}").weight.data
    result = RTN(wbits=4, groupsize=32, sym=False).quantize_layer(_linear(weight))
    codes, scales, zeros = reference_rtn(weight, 4, 32, False)
    assert torch.equal(result.codes.long(), codes)
    assert torch.equal(result.scales.float(), scales)
    assert torch.equal(result.zeros.long(), zeros)


def test_8_bit_rtn_barely_changes_stories260k_logits(stories):
    ids = torch.tensor([[1, 403, 407, 261, 378, 430, 260, 127, 8, 29]])
    with torch.no_grad():
        before = stories(ids).logits
    layers = linear_layers(stories)
    results = {n: RTN(wbits=8).quantize(LayerJob(n, m)) for n, m in layers.items()}
    original = {n: m.weight.data for n, m in layers.items()}
    try:
        for name, result in results.items():
            layers[name].weight.data = result.dequantize().float()
        with torch.no_grad():
            after = stories(ids).logits
    finally:
        for n, w in original.items():
            layers[n].weight.data = w
    assert (after - before).abs().max() < 0.05 * before.abs().max()
    assert torch.equal(after.argmax(-1), before.argmax(-1))


def _relative_error(w: torch.Tensor, result: RTNResult) -> float:
    return float((w - result.dequantize().float()).pow(2).sum() / w.pow(2).sum())


def _linear(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    linear.weight.data = weight.clone()
    if bias:
        linear.bias.data = torch.linspace(-1, 1, weight.shape[0])
    return linear
