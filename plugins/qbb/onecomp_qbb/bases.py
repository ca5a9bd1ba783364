"""Binary bases of one weight matrix (pure functions, tensors in and out).

Ŵ = Σ_k B_k·diag(a_k) with N sign matrices B_k ∈ {±1}^{p×m} and N scale
vectors a_k ∈ R^m (one scale per input column and basis, the reference's
axis). Column j of Ŵ only takes the 2^N values Σ_k s_k·a_kj (s ∈ {±1}^N):
every column has its own small symmetric codebook, so the fit is a 1-D
clustering per column with an additive structure:

- greedy start: each new basis is the sign of the residual, its scale the
  residual's mean magnitude (the reference's initialisation);
- then alternate two exact steps, each of which can only lower the error:
  the best code of every element given the scales (all 2^N sign patterns
  enumerated, so a sign flips whenever that helps), and the exact
  least-squares scales of every column given the codes (an N×N solve).

With calibration, :func:`fit_bases_hessian` fits the columns in order with
GPTQ's error feedback: each column's codebook is fitted to the column as the
earlier columns' rounding errors left it, and its own error is pushed onto
the later columns through the inverse Hessian.
"""

from __future__ import annotations

import functools
import itertools

import torch

_EPS = 1e-12
#: elements per chunk when enumerating codes (bounds the p × m × 2^N distance tensor)
_CHUNK = 1 << 22


def sign_of(x: torch.Tensor) -> torch.Tensor:
    """±1 with sign(0) = +1 (the reference's convention)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def patterns(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All 2^n sign patterns as a (2^n, n) ±1 tensor."""
    return _patterns(n).to(dtype)


@functools.cache
def _patterns(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=n)), dtype=torch.float64)


def compose(signs: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Σ_k B_k·diag(a_k): ``signs`` (N, p, m), ``scales`` (N, m) → (p, m)."""
    return (signs * scales[:, None, :]).sum(0)


def greedy_bases(target: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's start: B_k = sign(R), a_k = column mean of |R|, R -= B_k·diag(a_k)."""
    residual = target.clone()
    signs, scales = [], []
    for _ in range(n):
        b = sign_of(residual)
        a = residual.abs().mean(0)
        residual -= b * a[None, :]
        signs.append(b)
        scales.append(a)
    return torch.stack(signs), torch.stack(scales)


def best_codes(target: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The sign pattern of every element nearest to it given the scales: (N, p, m) ±1.

    Exact: all 2^N levels Σ_k s_k·a_kj of each column are compared.
    """
    n, m = scales.shape
    pats = patterns(n, target.dtype)  # (L, N)
    levels = pats @ scales  # (L, m)
    p = target.shape[0]
    rows = max(1, _CHUNK // max(1, m * len(pats)))
    index = torch.empty(p, m, dtype=torch.long)
    for start in range(0, p, rows):
        part = target[start : start + rows]
        dist = (part[:, :, None] - levels.t()[None, :, :]).abs()  # (rows, m, L)
        index[start : start + rows] = dist.argmin(-1)
    return pats[index].permute(2, 0, 1).contiguous()  # (N, p, m)


def ls_scales(target: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Exact least-squares scales per column for fixed signs: (N, m).

    Column j solves (B_jᵀB_j)·a_j = B_jᵀ·t_j with B_j the (p × N) signs of
    the column; a tiny ridge keeps a column whose bases coincide solvable
    (then any split of the shared scale is optimal).
    """
    n = signs.shape[0]
    gram = torch.einsum("kpm,lpm->mkl", signs, signs)  # (m, N, N)
    rhs = torch.einsum("kpm,pm->mk", signs, target)  # (m, N)
    ridge = 1e-9 * signs.shape[1] * torch.eye(n, dtype=target.dtype)
    return torch.linalg.solve(gram + ridge, rhs).t().contiguous()


def refine(
    target: torch.Tensor, signs: torch.Tensor, scales: torch.Tensor, rounds: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Alternate exact codes and exact scales until no code changes: (signs, scales, rounds run).

    Every half-step is an exact minimisation, so ‖T − Ŵ‖² never increases.
    """
    scales = ls_scales(target, signs)
    done = 0
    while done < rounds:
        done += 1
        new = best_codes(target, scales)
        changed = not torch.equal(new, signs)
        signs = new
        scales = ls_scales(target, signs)
        if not changed:
            break
    return signs, scales, done


def fit_bases(target: torch.Tensor, n: int, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-free fit of N bases to ``target`` (p × m): greedy start, then :func:`refine`.

    The bases are added one at a time (as in the reference), each followed by
    the alternating refinement of all bases so far.
    """
    t = target.double()
    signs, scales = greedy_bases(t, 1)
    signs, scales, _ = refine(t, signs, scales, rounds)
    for _ in range(1, n):
        residual = t - compose(signs, scales)
        extra_sign, extra_scale = greedy_bases(residual, 1)
        signs = torch.cat([signs, extra_sign])
        scales = torch.cat([scales, extra_scale])
        signs, scales, _ = refine(t, signs, scales, rounds)
    return signs.float(), scales.float()


def fit_bases_hessian(
    weight: torch.Tensor, hessian: torch.Tensor, n: int, rounds: int, damp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit N bases on the layer's output error tr((W − Ŵ)·H·(W − Ŵ)ᵀ), GPTQ-style.

    Columns are taken in order; column j's codebook (its N scales) and codes
    are fitted by :func:`refine` to the column as updated by the earlier
    columns' errors, and its error e_j = (w_j − ŵ_j)/U_jj is pushed onto the
    later columns through the upper Cholesky factor U of H⁻¹ (GPTQ's update,
    without lazy batching: the per-column solve dominates anyway).
    """
    w = weight.double().clone()
    p, m = w.shape
    h = hessian.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * h.diagonal().mean() * torch.eye(m, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    start_signs, start_scales = fit_bases(w, n, rounds)
    signs = start_signs.double()
    scales = start_scales.double()
    for j in range(m):
        col = w[:, j : j + 1]
        s, a, _ = refine(col, signs[:, :, j : j + 1], scales[:, j : j + 1], rounds)
        signs[:, :, j : j + 1], scales[:, j : j + 1] = s, a
        q = compose(s, a)
        err = (col - q) / u[j, j]
        w[:, j + 1 :] -= err @ u[j : j + 1, j + 1 :]
    return signs.float(), scales.float()


def progressive_target(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The reference's progressive target, on a grid that keeps the weights.

    The reference rounds W to s·round(W/s) with s = max|W|/(2^{b−1} − 1), so at
    b = 2 every weight below max|W|/2 becomes 0. Here the 2^b levels are the
    symmetric mid-rise grid (k + ½)·s, k = −2^{b−1} … 2^{b−1} − 1 (no level at 0),
    with the step s of least squared error among 40 candidates up to the one
    whose extreme level is max|W|.
    """
    half = 2 ** (bits - 1)
    w = weight.double()
    top = float(w.abs().max().clamp_min(_EPS)) / (half - 0.5)
    best, best_err = None, float("inf")
    for frac in torch.linspace(0.025, 1.0, 40).tolist():
        s = top * frac
        q = (torch.floor(w / s).clamp(-half, half - 1) + 0.5) * s
        err = float((w - q).pow(2).sum())
        if err < best_err:
            best, best_err = q, err
    return best.to(weight.dtype)
