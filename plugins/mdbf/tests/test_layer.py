"""The packed inference layer: packing round trips on odd shapes, forward = dense product."""

from __future__ import annotations

import pytest
import torch

from onecomp_mdbf import MDBF, MDBFResult, MultipathMDBFLinear
from onecomp_mdbf.envelope import Path, compose


def _parts(p, m, r, env, paths, seed=0):
    g = torch.Generator().manual_seed(seed)

    def signs(a, b):
        return torch.where(torch.randn(paths, a, b, generator=g) >= 0, 1.0, -1.0)

    def env_(n):
        return torch.randn(paths, n, env, generator=g).half()

    return {
        "sign_a": signs(p, r), "sign_b": signs(r, m),
        "env_a": env_(p), "env_qu": env_(r), "env_qv": env_(r), "env_b": env_(m),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("p", "m", "r", "env", "paths"), [(7, 13, 5, 2, 1), (3, 5, 1, 1, 2), (9, 4, 11, 3, 2)]
)
def test_round_trip_and_forward_is_the_dense_product(p, m, r, env, paths):
    parts = _parts(p, m, r, env, paths)
    bias = torch.randn(p)
    layer = MultipathMDBFLinear.from_parts(parts, bias)
    assert layer.sign_a.shape == (paths, -(-p * r // 8)) and layer.sign_a.dtype == torch.uint8
    for i, (s_a, s_b) in enumerate(layer.signs(torch.float32)):
        assert torch.equal(s_a, parts["sign_a"][i]) and torch.equal(s_b, parts["sign_b"][i])
    dense = sum(
        (parts["sign_a"][i] * (parts["env_a"][i].float() @ parts["env_qu"][i].float().t()))
        @ (parts["sign_b"][i] * (parts["env_qv"][i].float() @ parts["env_b"][i].float().t()))
        for i in range(paths)
    )
    torch.testing.assert_close(layer.dequantize(), dense)
    x = torch.randn(2, 3, m)
    torch.testing.assert_close(layer(x), x @ dense.t() + bias.half().float(), rtol=1e-4, atol=1e-4)
    assert layer.state_problems() == []
    cached = MultipathMDBFLinear.from_parts(parts, bias, cache_signs=True)
    torch.testing.assert_close(cached(x), layer(x))


def test_empty_layer_from_the_row_loads_the_saved_tensors():
    parts = _parts(6, 10, 3, 2, 1)
    from onecomp_core.kernels import pack_signs

    packed = {
        k: torch.stack([pack_signs(s) for s in v]) if k.startswith("sign") else v
        for k, v in parts.items()
    }
    result = MDBFResult(**packed, out_features=6, in_features=10, rank=3, envelopes=2, paths=1)
    built = MDBF().inference_layer(result, torch.nn.Linear(10, 6, bias=False))
    row = result.row(6, 10, False)
    assert row["effective_bits"] == pytest.approx((3 * 16 + 16 * 2 * (16 + 6)) / 60, abs=1e-5)
    empty = MDBF.empty_layer(row)
    empty.load_state_dict(built.state_dict())
    assert torch.equal(empty.dequantize().half(), result.dequantize())
    path = result.path_list()[0]
    assert isinstance(path, Path)
    torch.testing.assert_close(compose([path]), result.dequantize().float(), rtol=1e-3, atol=1e-3)
    empty.sign_b[0, -1] = 0  # padding bits must stay +1
    assert empty.state_problems()
