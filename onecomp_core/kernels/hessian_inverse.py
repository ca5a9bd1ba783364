"""The inverse-Hessian factor GPTQ-style solves run on, built in one (in × in) matrix.

GPTQ needs the upper Cholesky factor U of (H + λI)⁻¹. With J the reversal
permutation and JHJ = L'L'ᵀ, U = J·L'⁻¹·J: one Cholesky and one triangular
inverse, never H⁻¹ itself. These matrices are the peak memory of a whole
quantization run (a 5632-wide ``down_proj``: 127 MB each in fp32), so JHJ is
gathered into one matrix, factored and inverted in that same storage, and U
is read from it a block of rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .team import Team, current_team


def inverse_cholesky_flipped(
    flipped_hessian: Callable[[], torch.Tensor],
    percdamp: float,
    mean_diag: torch.Tensor,
    retries: int = 3,
    factored: Callable[[], object] | None = None,
) -> tuple[torch.Tensor | None, float | None]:
    """L'⁻¹ (JHJ + λ·mean_diag·I = L'L'ᵀ), given a maker of fresh JHJ copies (one per try).

    λ = ``percdamp``, growing 10× per failed try; U = J·L'⁻¹·J is the upper
    Cholesky factor of the damped H⁻¹ (UᵀU), so no H⁻¹ is ever formed.

    Returns the inverse factor itself (U = J·L'⁻¹·J is read a block of rows at
    a time by :func:`upper_rows`). The (in × in) matrices are the peak memory
    of a whole quantization run (a 5632-wide ``down_proj``: 127 MB each in
    fp32), so only one exists here: JHJ (made column-major, the layout LAPACK
    works in) is damped, factored and inverted in place. A failed try leaves
    a half-factored matrix, hence a fresh copy for the next. A factor whose
    inverse is not finite ends the tries: the caller rounds to nearest.
    ``factored`` is called once a factorization succeeded, before the inverse
    is made: no further copy is needed, so the caller can drop H there (H
    and the factor are then never held during the inverse's temporaries).
    """
    for attempt in range(retries + 1):
        damp = percdamp * 10**attempt
        lower = _column_major(flipped_hessian())
        lower.diagonal().add_(damp * mean_diag)
        info = torch.empty((), dtype=torch.int32, device=lower.device)
        torch.linalg.cholesky_ex(lower, out=(lower, info))
        if info.item() != 0:
            del lower
            continue
        if factored is not None:
            factored()
        _invert_lower_in_place(lower)
        if _finite(lower.mT):
            return lower, damp
        return None, None
    return None, None


#: columns of the identity solved against the Cholesky factor at once
_INVERSE_COLUMNS = 512


def _invert_lower_in_place(lower: torch.Tensor) -> None:
    """Overwrite the lower factor L with L⁻¹, a slice of columns at a time.

    Columns [j, j+k) of L⁻¹ solve L·X = E against the whole factor, whose
    columns before j already hold L⁻¹: the solution's rows before j are zero,
    so those columns are only ever multiplied by zero and the numbers are
    those of one solve against the intact factor (bit-identical). Columns of
    L from j on are read before they are overwritten.
    """
    n = lower.shape[0]
    team = current_team()
    starts = list(range(0, n, _INVERSE_COLUMNS))
    for index, j in enumerate(starts):
        if team is not None and index % team.world != team.rank:
            continue  # another member's slice (every slice costs the same: a full-height solve)
        k = min(_INVERSE_COLUMNS, n - j)
        eye = torch.zeros(n, k, dtype=lower.dtype, device=lower.device)
        eye[j : j + k].diagonal().fill_(1.0)
        solved = torch.linalg.solve_triangular(lower, eye, upper=False)
        lower[j:, j : j + k] = solved[j:]
    if team is not None:
        _exchange_slices(lower, starts, team)


def _exchange_slices(lower: torch.Tensor, starts: list[int], team: Team) -> None:
    """Every member's solved column slices into every member's ``lower``, from their owners.

    A slice solved by one member is the one a lone process solves: the columns
    it reads before its own hold L or L⁻¹ depending on the member, but they
    are only ever multiplied by the zero rows of the solution.
    """
    n = lower.shape[0]
    for index, j in enumerate(starts):
        k = min(_INVERSE_COLUMNS, n - j)
        owner = index % team.world
        if owner == team.rank:
            piece = lower[j:, j : j + k].contiguous()
        else:
            piece = torch.empty(n - j, k, dtype=lower.dtype, device=lower.device)
        team.broadcast(piece, owner)
        if owner != team.rank:
            lower[j:, j : j + k] = piece


def _column_major(matrix: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column-major (a copy only when it is not already)."""
    return matrix if matrix.mT.is_contiguous() else matrix.mT.contiguous().mT


def _finite(matrix: torch.Tensor) -> bool:
    """Whether every entry is finite, a slice of rows at a time (no whole boolean copy)."""
    step = _INVERSE_COLUMNS
    return all(
        bool(torch.isfinite(matrix[i : i + step]).all()) for i in range(0, len(matrix), step)
    )


def upper_rows(inverse: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of U = J·L'⁻¹·J (row-major, a copy), read from ``inverse`` = L'⁻¹."""
    n = inverse.shape[0]
    return inverse[n - r1 : n - r0].flip(0, 1).contiguous()


def flipped_hessian(
    hessian: torch.Tensor, order: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """J·Hₚ·J in float32, Hₚ = H in ``order`` with dead inputs' H_jj set to 1.

    Stored column-major (the layout LAPACK factors in place) and gathered a
    slice of columns at a time into that one matrix, so no whole intermediate
    (H in another dtype or half-permuted) exists beside it.
    """
    h = hessian.detach()
    rev = order.flip(0).to(h.device)
    n = len(rev)
    flipped = torch.empty(n, n, dtype=torch.float32, device=device).mT
    for c0 in range(0, n, _GATHER_COLUMNS):
        columns = h.index_select(1, rev[c0 : c0 + _GATHER_COLUMNS]).index_select(0, rev)
        flipped[:, c0 : c0 + _GATHER_COLUMNS] = columns.to(device, torch.float32)
    dead = (torch.diagonal(h) == 0)[rev].to(device)
    flipped.diagonal()[dead] = 1.0
    return flipped


#: columns of H gathered at once by :func:`flipped_hessian`
_GATHER_COLUMNS = 512
