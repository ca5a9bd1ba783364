"""RTN against an independent, deliberately plain per-row computation, and its packed layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onecomp_core.packed_linear import PackedIntLinear
from onecomp_core.rtn import RTN, RTNResult


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
    deq = result.compute_dequantized_weight()
    assert deq.dtype == torch.float16
    assert torch.equal(deq, expected.half())
    assert torch.equal(deq[3], torch.zeros(172, dtype=torch.float16))  # a zero row stays zero


def test_asymmetric_error_is_at_most_half_a_step(weight):
    result = RTN(wbits=4, groupsize=32, sym=False).quantize_layer(_linear(weight))
    step = result.scales.float()[:, torch.arange(172) // 32]
    error = (weight - result.compute_dequantized_weight().float()).abs()
    assert (error <= step / 2 + 1e-3 * step).all()


def test_effective_bits_count_the_fp16_scale_and_zero_per_group():
    assert RTNResult(bits=4, groupsize=32).effective_bits(12, 172) == 4 + 20 / 32
    assert RTNResult(bits=3, groupsize=-1).effective_bits(12, 172) == 3 + 19 / 172


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
    layer = q.create_inference_layer(result, linear)
    assert isinstance(layer, PackedIntLinear)
    x = torch.randn(5, 172)
    expected = F.linear(
        x, result.compute_dequantized_weight().float(), linear.bias.detach().half().float()
    )
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.codes(), result.codes)


def test_an_empty_layer_built_from_the_saved_row_loads_the_packed_tensors(weight):
    linear = _linear(weight, bias=True)
    q = RTN(wbits=3, groupsize=32, sym=False)
    result = q.quantize_layer(linear)
    packed = q.create_inference_layer(result, linear)
    row = {"in_features": 172, "out_features": 12, "bias": True, **result.layer_config()}
    empty = RTN.build_inference_layer(row)
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
    eight = RTN(wbits=8, calc_quant_error=True)
    four = RTN(wbits=4, calc_quant_error=True)
    for name, module in eight.setup(stories).items():
        r8, r4 = eight.quantize(module, name), four.quantize(module, name)
        assert r8.relative_weight_squared_error < 1e-4, name
        assert r4.relative_weight_squared_error > 50 * r8.relative_weight_squared_error, name
    assert len(eight.results) == 5 * 7


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
    q = RTN(wbits=8)
    for name, module in q.setup(stories).items():
        q.quantize(module, name)
    original = {n: stories.get_submodule(n).weight.data.clone() for n in q.results}
    try:
        q.apply_results_to_model(stories)
        with torch.no_grad():
            after = stories(ids).logits
    finally:
        for n, w in original.items():
            stories.get_submodule(n).weight.data = w
    assert (after - before).abs().max() < 0.05 * before.abs().max()
    assert torch.equal(after.argmax(-1), before.argmax(-1))


def _linear(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    linear.weight.data = weight.clone()
    if bias:
        linear.bias.data = torch.linspace(-1, 1, weight.shape[0])
    return linear
