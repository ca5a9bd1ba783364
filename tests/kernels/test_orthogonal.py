"""Seeded orthogonal transforms: orthogonal, reproducible from the seed, factored for any width."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.kernels import hadamard_transform, kronecker_factors, orthogonal_transform


@pytest.mark.parametrize("width", [1, 2, 64, 172, 43, 96, 105, 256])
def test_transform_is_orthogonal_and_matches_its_dense_matrix(width: int) -> None:
    t = orthogonal_transform(width, seed=3)
    q = t.matrix()
    assert torch.allclose(q @ q.T, torch.eye(width, dtype=q.dtype), atol=1e-10)
    x = torch.randn(5, 2, width, dtype=torch.float64)
    assert torch.allclose(t.apply(x), x @ q, atol=1e-10)
    assert torch.allclose(t.apply_transpose(x), x @ q.T, atol=1e-10)
    assert torch.allclose(t.apply_transpose(t.apply(x)), x, atol=1e-10)


def test_same_seed_same_transform_other_seed_other_transform() -> None:
    a = orthogonal_transform(172, seed=7).matrix()
    assert torch.equal(a, orthogonal_transform(172, seed=7).matrix())
    assert not torch.allclose(a, orthogonal_transform(172, seed=8).matrix())


def test_factors_cover_the_width_and_stay_small() -> None:
    assert kronecker_factors(64) == [64]
    assert kronecker_factors(172) == [4, 43]
    assert kronecker_factors(11008) == [256, 43]
    assert kronecker_factors(105) == [7, 15]
    for width in (172, 5632, 13824, 105, 97):
        factors = kronecker_factors(width)
        assert torch.tensor(factors).prod().item() == width


def test_hadamard_is_the_sylvester_matrix_and_fast_path_works_in_fp32() -> None:
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / 2**0.5
    h8 = torch.kron(torch.kron(h2, h2), h2)
    assert torch.allclose(hadamard_transform(torch.eye(8)), h8, atol=1e-6)
    x = torch.randn(3, 256)
    t = orthogonal_transform(256, seed=0)
    assert t.apply(x).dtype == torch.float32
    assert torch.allclose(t.apply_transpose(t.apply(x)), x, atol=1e-5)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_transform(torch.randn(3, 12))
