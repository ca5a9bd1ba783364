"""DoubleBinaryLinear: the 5-stage pipeline equals the dequantized Linear."""

import pytest
import torch

from onecomp_dbf.factors import compose
from onecomp_dbf.layer import DoubleBinaryLinear


def _parts(n=13, k=6, m=11, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def signs(r, c):
        return torch.where(torch.rand(r, c, generator=gen) < 0.5, -1.0, 1.0)

    vec = [torch.rand(d, generator=gen).add(0.5).half() for d in (n, k, m)]
    return vec[0], signs(n, k), vec[1], signs(k, m), vec[2]


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_forward_equals_dequantized_linear(cache, with_bias):
    a, s_a, c, s_b, b = _parts()
    bias = torch.randn(13) if with_bias else None
    layer = DoubleBinaryLinear.from_parts(a, s_a, c, s_b, b, bias=bias, cache_signs=cache)
    w = compose(a, s_a, c, s_b, b)
    assert torch.allclose(layer.dequantize(), w)
    x = torch.randn(2, 5, 11)
    ref = torch.nn.functional.linear(x, w, None if bias is None else bias.half().float())
    assert torch.allclose(layer(x), ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(layer(x), layer(x))  # second call (cached or not) agrees
    assert (layer._signs is not None) == cache


def test_buffers_are_the_seed_format():
    a, s_a, c, s_b, b = _parts()
    layer = DoubleBinaryLinear.from_parts(a, s_a, c, s_b, b, bias=torch.zeros(13))
    state = layer.state_dict()
    assert set(state) == {"scaling0", "scaling2", "scaling4", "bp1", "bp3", "bias"}
    assert state["scaling0"].shape == (11,) and state["scaling2"].shape == (6,)
    assert state["scaling4"].shape == (13,)
    assert state["bp1"].dtype == torch.uint8 and state["bp1"].numel() == -(-6 * 11 // 8)
    assert state["bp3"].numel() == -(-13 * 6 // 8)


def test_empty_layer_loads_a_state_dict():
    a, s_a, c, s_b, b = _parts()
    full = DoubleBinaryLinear.from_parts(a, s_a, c, s_b, b)
    empty = DoubleBinaryLinear(11, 13, 6)
    empty.load_state_dict(full.state_dict())
    x = torch.randn(3, 11)
    assert torch.equal(empty(x), full(x))


def test_half_precision_forward():
    a, s_a, c, s_b, b = _parts()
    layer = DoubleBinaryLinear.from_parts(a, s_a, c, s_b, b, cache_signs=True)
    x = torch.randn(4, 11)
    assert layer(x.half()).dtype == torch.float16
    assert torch.allclose(layer(x.half()).float(), layer(x), atol=5e-2, rtol=1e-2)


def test_loaded_signs_padded_for_another_shape_are_named():
    """The strict load: a sign matrix whose last byte's padding is not +1 was packed for
    another shape than the table says; the layer names it (tested through state_problems,
    which the HF-folder loader calls for every packed layer)."""
    import torch

    from onecomp_dbf.layer import DoubleBinaryLinear

    torch.manual_seed(0)
    n, k, m = 5, 3, 7  # 21 and 15 signs: both matrices end in a padded byte
    layer = DoubleBinaryLinear.from_parts(
        torch.rand(n), torch.randn(n, k), torch.rand(k), torch.randn(k, m), torch.rand(m)
    )
    assert layer.state_problems() == []
    layer.bp3[-1] &= 0xFE  # clear the last padding bit
    assert layer.state_problems() == ["bp3: padding bits are not +1 (packed for another shape)"]
