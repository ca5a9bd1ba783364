"""DBF's in-place LAPACK calls on the CPU agree with torch's and consume their input."""

from __future__ import annotations

import pytest
import torch

from onecomp_dbf import factorization
from onecomp_dbf.factorization import _eigh_
from onecomp_dbf.refit import _solve_symmetric_


def _spd(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 2 * n, generator=torch.Generator().manual_seed(seed))
    return x @ x.t() / (2 * n) + 0.1 * torch.eye(n)


@pytest.mark.parametrize("driver", ["evd", "evr"])
def test_eigh_gives_torchs_eigenvalues_and_a_basis_of_the_same_matrix(driver, monkeypatch):
    if driver == "evr":  # the large-matrix driver, made to apply at this size
        monkeypatch.setattr(factorization, "EVD_WORKSPACE_BYTES", 1024)
    c = _spd(96, 0)
    e_ref, _ = torch.linalg.eigh(c)
    e, v = _eigh_(c.clone())
    assert e.dtype == torch.float32 and v.shape == (96, 96)
    torch.testing.assert_close(e, e_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v @ torch.diag(e) @ v.t(), c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v.t() @ v, torch.eye(96), rtol=0, atol=1e-4)


def test_eigh_picks_the_small_workspace_driver_only_for_large_matrices(monkeypatch):
    import scipy.linalg

    drivers = []
    real = scipy.linalg.eigh
    monkeypatch.setattr(
        scipy.linalg, "eigh", lambda *a, **k: drivers.append(k["driver"]) or real(*a, **k)
    )
    _eigh_(_spd(64, 1))  # 2·64²·4 bytes of syevd workspace: far under the limit
    monkeypatch.setattr(factorization, "EVD_WORKSPACE_BYTES", 2 * 64 * 64 * 4 - 1)
    _eigh_(_spd(64, 1))
    assert drivers == ["evd", "evr"]


def test_eigh_writes_the_eigenvectors_over_its_input():
    c = _spd(64, 1)
    _, v = _eigh_(c)
    assert v.untyped_storage().data_ptr() == c.untyped_storage().data_ptr()


def test_symmetric_solve_matches_torch_and_uses_the_matrix_memory():
    gram, rhs = _spd(80, 2), torch.randn(80, generator=torch.Generator().manual_seed(3))
    expected = torch.linalg.solve(gram, rhs)
    work = gram.clone()
    x = _solve_symmetric_(work, rhs)
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5)
    assert not torch.equal(work, gram)  # factorized in place: no second (in × in) matrix
