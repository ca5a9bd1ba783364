"""The inverse-Hessian factor: built in one matrix's storage, numbers of the dense recipe."""

import torch

from onecomp_core.kernels.hessian_inverse import (
    flipped_hessian,
    inverse_cholesky_flipped,
    upper_rows,
)


def _hessian(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, n, generator=g)
    return x.t() @ x / x.shape[0]


def _dense_upper(h: torch.Tensor, percdamp: float, mean: torch.Tensor | None = None):
    """The recipe without the in-place tricks: J·(chol(JHJ + λI))⁻¹·J, one solve."""
    flipped = h.flip(0, 1).clone()
    mean = torch.diagonal(h).mean() if mean is None else mean
    flipped.diagonal().add_(percdamp * mean)
    lower = torch.linalg.cholesky(flipped)
    eye = torch.eye(len(h))
    return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)


def test_upper_factor_bit_identical_to_the_dense_recipe_and_inverts_h():
    n = 1100  # not a multiple of the 512-column slices
    h = _hessian(n)
    natural = torch.arange(n)
    mean = torch.diagonal(h).mean()
    inverse, damp = inverse_cholesky_flipped(
        lambda: flipped_hessian(h, natural, torch.device("cpu")), 0.01, mean
    )
    assert damp == 0.01
    upper = upper_rows(inverse, 0, n)
    assert torch.equal(upper, _dense_upper(h, 0.01))
    damped = h + 0.01 * torch.diagonal(h).mean() * torch.eye(n)
    eye = (upper.t() @ upper).double() @ damped.double()
    assert torch.allclose(eye, torch.eye(n, dtype=torch.float64), atol=1e-3)


def test_factor_is_made_in_the_storage_of_the_one_copy():
    """No second (in × in) matrix: the returned inverse lives where JHJ was gathered."""
    h = _hessian(300, seed=1)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    made = []

    def maker() -> torch.Tensor:
        made.append(flipped_hessian(h, order, torch.device("cpu")))
        return made[-1]

    mean = torch.diagonal(h)[order].mean()  # the solve's mean: of the gathered diagonal
    inverse, _ = inverse_cholesky_flipped(maker, 0.01, mean)
    assert len(made) == 1
    assert inverse.untyped_storage().data_ptr() == made[0].untyped_storage().data_ptr()
    rows = upper_rows(inverse, 128, 256)
    permuted = h[order][:, order]
    assert torch.equal(rows, _dense_upper(permuted, 0.01, mean)[128:256])


def test_a_failed_factorisation_retries_on_a_fresh_copy_with_more_damping():
    h = _hessian(64, seed=3)
    h -= 1.5 * torch.linalg.eigvalsh(h)[0].abs() * torch.eye(64)  # indefinite at 1 % damping
    calls = []

    def maker() -> torch.Tensor:
        calls.append(1)
        return h.flip(0, 1).clone()

    inverse, damp = inverse_cholesky_flipped(maker, 0.01, torch.diagonal(h).mean(), retries=3)
    assert len(calls) >= 2 and damp is not None and damp > 0.01
    assert inverse is not None and torch.isfinite(inverse).all()


def test_an_h_that_is_not_exactly_symmetric_gives_the_numbers_of_the_row_major_recipe():
    """Accumulated XᵀX may differ from its transpose in the last bit: the factor must read
    the same triangle of J·Hₚ·J as a plain Cholesky of the row-major matrix does."""
    h = _hessian(200, seed=4)
    h += torch.triu(torch.full_like(h, 1e-3), diagonal=1)  # only the upper triangle
    assert not torch.equal(h, h.t())
    order = torch.randperm(200, generator=torch.Generator().manual_seed(5))
    mean = torch.diagonal(h)[order].mean()
    inverse, _ = inverse_cholesky_flipped(
        lambda: flipped_hessian(h, order, torch.device("cpu")), 0.01, mean
    )
    assert torch.equal(upper_rows(inverse, 0, 200), _dense_upper(h[order][:, order], 0.01, mean))
