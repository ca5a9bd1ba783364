"""JointQ on one matrix: never worse than its GPTQ start, any group size, rows independent."""

from __future__ import annotations

import pytest
import torch
from onecomp_core.kernels import GridSpec, gptq_quantize

from onecomp_jointq.jointq import jointq_quantize, regularised

SHRINKS = [0.0, 1.0, 0.8]


def _problem(out_f: int = 12, n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, n, generator=g) * torch.exp(0.5 * torch.randn(1, n, generator=g))
    x = torch.randn(400, n, generator=g) * torch.exp(torch.randn(1, n, generator=g))
    return w, 2 * x.t() @ x / 400


def _dense(out) -> torch.Tensor:
    g = out.g_idx.long()
    return out.scales.float()[:, g] * (out.codes.float() - out.zeros.float()[:, g])


def _error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    delta = (w - w_hat).double()
    return ((delta @ h.double()) * delta).sum(1)


@pytest.mark.parametrize(("groupsize", "actorder", "sym"), [(-1, True, False), (16, False, True)])
def test_every_row_ends_at_or_below_its_gptq_start(
    groupsize: int, actorder: bool, sym: bool
) -> None:
    w, h = _problem()
    spec = GridSpec(bits=3, sym=sym, clip_grid=20, min_zero=0 if sym else 1)
    kw = {"groupsize": groupsize, "actorder": actorder}
    out = jointq_quantize(w, h, spec, lam=0.05, row_shrinks=SHRINKS, **kw)
    start = gptq_quantize(w, regularised(h, 0.05, "diagonal", 0.5), spec, **kw, row_shrinks=SHRINKS)
    hr = regularised(h, 0.05, "diagonal", 0.5)
    mine, theirs = _error(w, _dense(out), hr), _error(w, _dense(start), hr)
    assert bool((mine <= theirs * (1 + 1e-6)).all()) and float(mine.sum()) < 0.99 * float(
        theirs.sum()
    )
    assert torch.equal(out.zeros, start.zeros) and torch.equal(out.g_idx, start.g_idx)
    assert int(out.codes.max()) <= 7 and out.codes.dtype == torch.uint8
    energy = ((w.double() @ hr.double()) * w.double()).sum()
    assert out.final_error == pytest.approx(float(mine.sum() / energy), rel=1e-6)
    assert out.start_error == pytest.approx(float(theirs.sum() / energy), rel=1e-3)


def test_a_group_size_that_does_not_divide_the_width_leaves_a_short_last_group() -> None:
    w, h = _problem(n=40)
    out = jointq_quantize(w, h, GridSpec(bits=4, sym=False), groupsize=16)
    assert out.scales.shape == (12, 3)
    assert torch.bincount(out.g_idx.long()).tolist() == [16, 16, 8]


def test_rows_are_solved_independently() -> None:
    """Per-row stopping: quantizing a few rows alone gives exactly their rows of the whole."""
    w, h = _problem(out_f=10, seed=1)
    spec = GridSpec(bits=3, sym=False, clip_grid=20, min_zero=1)
    whole = jointq_quantize(w, h, spec, groupsize=16, actorder=True, row_shrinks=SHRINKS)
    part = jointq_quantize(w[3:6], h, spec, groupsize=16, actorder=True, row_shrinks=SHRINKS)
    assert torch.equal(part.codes, whole.codes[3:6])
    assert torch.equal(part.scales, whole.scales[3:6])


def test_multistart_ends_no_higher_than_the_single_start() -> None:
    w, h = _problem(seed=4)
    spec = GridSpec(bits=3, sym=False, clip_grid=20, min_zero=1)
    kw = {"groupsize": 16, "actorder": True, "row_shrinks": SHRINKS}
    single = jointq_quantize(w, h, spec, **kw)
    multi = jointq_quantize(w, h, spec, multistart=True, **kw)
    assert multi.final_error <= single.final_error * (1 + 1e-6)
    assert not torch.equal(multi.codes, single.codes)  # some rows ended from another start


def test_regulariser_diagonal_and_identity() -> None:
    h = torch.diag(torch.tensor([4.0, 1.0, 1.0, 2.0]))
    mean = 2.0
    diagonal = regularised(h, 0.5, "diagonal", 0.5)
    expected = torch.tensor([4.0, 1.0, 1.0, 2.0]) + 0.5 * mean * torch.tensor(
        [2.0**0.5, 0.5**0.5, 0.5**0.5, 1.0]
    )
    assert torch.allclose(torch.diagonal(diagonal), expected)
    assert torch.allclose(regularised(h, 0.5, "identity", 0.5), h + 0.5 * mean * torch.eye(4))
