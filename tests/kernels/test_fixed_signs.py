"""Fixed-sign products: the dense product's values and input gradient, int8 in the graph."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import fixed_sign_matmul, int8_signs, pack_signs


def _signs(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).sign()


def test_int8_signs_unpack_the_packed_matrix():
    dense = _signs(13, 11)  # 143 signs: the last byte is padded
    got = int8_signs(pack_signs(dense), 13, 11)
    assert got.dtype == torch.int8 and torch.equal(got.float(), dense)


def test_product_and_input_gradient_are_the_dense_ones():
    dense = _signs(24, 40)
    x = torch.randn(3, 5, 40, requires_grad=True)
    y = fixed_sign_matmul(x, dense.to(torch.int8))
    upstream = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, x, upstream)
    x_ref = x.detach().clone().requires_grad_()
    want_y = x_ref @ dense.t()
    (want,) = torch.autograd.grad(want_y, x_ref, upstream)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(got, want)


def test_the_graph_keeps_the_int8_signs_not_a_float_copy():
    signs = _signs(64, 96).to(torch.int8)
    x = torch.randn(8, 96, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fixed_sign_matmul(x, signs).sum().backward()
    assert [t.dtype for t in saved] == [torch.int8]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        (x @ signs.float().t()).sum().backward()
    assert any(t.dtype == torch.float32 and t.numel() == signs.numel() for t in saved)


def test_a_width_mismatch_is_one_clear_error():
    with pytest.raises(ValueError, match="5 features, the sign matrix 6"):
        fixed_sign_matmul(torch.ones(2, 5), torch.ones(3, 6, dtype=torch.int8))
