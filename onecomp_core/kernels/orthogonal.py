"""Seeded orthogonal transforms of any width, applied in factored form.

Rotations (QuaRot/SpinQuant) and incoherence processing (QuIP) multiply
activations and weights by an orthogonal ``Q`` so that outliers spread over
all coordinates. Only the seed (and the width) is stored; the transform is
rebuilt from it on load.

- A power-of-two width ``n`` gets a randomized Hadamard ``Q = D·H``: a seeded
  random ±1 diagonal ``D`` times the normalized Walsh–Hadamard matrix ``H``,
  applied with the fast transform in O(n log n) per row.
- Any other width ``m`` is split into Kronecker factors ``m = m₁·m₂(·m₃)``:
  the power-of-two part of ``m`` (a randomized Hadamard) and the odd part (a
  seeded Haar-random orthogonal matrix from the QR of a Gaussian, split in two
  near √ when that is possible). ``Q = Q₁ ⊗ Q₂ ⊗ …`` is applied by reshaping
  the last dimension into the factors and multiplying each axis by its
  factor: O(m·(m₁+m₂+…)) per row, never a dense m×m product.

Convention: rows are vectors, so :meth:`OrthogonalTransform.apply` computes
``x @ Q`` and :meth:`OrthogonalTransform.apply_transpose` computes
``x @ Qᵀ`` on the last dimension. For a linear ``y = x Wᵀ`` whose input is
rotated, ``x Q (W Q)ᵀ = x Wᵀ``: the weight's input side takes ``W Q``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = [
    "OrthogonalTransform",
    "hadamard_transform",
    "kronecker_factors",
    "orthogonal_transform",
]


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """``x @ H`` on the last dimension, ``H`` the normalized Sylvester Walsh–Hadamard matrix.

    ``H`` is symmetric and orthogonal, so this is also ``x @ Hᵀ``. The width
    must be a power of two; cost O(n log n) per row.
    """
    n = x.shape[-1]
    if n & (n - 1) or n == 0:
        raise ValueError(f"hadamard_transform: width must be a power of two, got {n}")
    shape = x.shape
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        y = y.view(-1, n // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(shape) * (1.0 / math.sqrt(n))).to(x.dtype)


def kronecker_factors(width: int) -> list[int]:
    """The factor sizes used for ``width``: its power-of-two part first, then its odd part.

    The odd part ``r`` is split into ``a·b`` with ``a`` the largest divisor of
    ``r`` not above √r (kept whole when ``r`` is prime). Factors of size 1 are
    dropped; a width of 1 gives ``[1]``.
    """
    if width < 1:
        raise ValueError(f"orthogonal transform: width must be >= 1, got {width}")
    power = width & -width
    odd = width // power
    factors = [power] if power > 1 else []
    if odd > 1:
        a = max(d for d in range(1, math.isqrt(odd) + 1) if odd % d == 0)
        factors += [odd] if a == 1 else [a, odd // a]
    return factors or [1]


@dataclass(frozen=True)
class _Factor:
    """One Kronecker factor: a randomized Hadamard (``signs``) or a dense orthogonal (``matrix``)."""

    size: int
    signs: torch.Tensor | None = None
    matrix: torch.Tensor | None = None


def _draw_factor(size: int, generator: torch.Generator) -> _Factor:
    if size & (size - 1) == 0:
        signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int64)
        return _Factor(size, signs=(signs * 2 - 1).to(torch.float64))
    gauss = torch.randn(size, size, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    # Sign fix of R's diagonal: makes Q Haar-distributed (and deterministic).
    q = q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)
    return _Factor(size, matrix=q)


@dataclass
class OrthogonalTransform:
    """A seeded orthogonal ``Q`` (width × width) kept as its Kronecker factors.

    State lives here (the drawn factors and their per-device/dtype copies);
    build one with :func:`orthogonal_transform`.
    """

    width: int
    seed: int
    factors: list[_Factor]
    _cache: dict = field(default_factory=dict, repr=False)

    def _on(self, ref: torch.Tensor) -> list[torch.Tensor]:
        key = (ref.device, ref.dtype)
        if key not in self._cache:
            self._cache[key] = [
                (f.signs if f.signs is not None else f.matrix).to(ref.device, ref.dtype)
                for f in self.factors
            ]
        return self._cache[key]

    def _run(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        if x.shape[-1] != self.width:
            raise ValueError(
                f"orthogonal transform of width {self.width} applied to a last dim of {x.shape[-1]}"
            )
        lead = x.shape[:-1]
        sizes = [f.size for f in self.factors]
        y = x.reshape(*lead, *sizes)
        for axis, (factor, tensor) in enumerate(zip(self.factors, self._on(x), strict=True)):
            y = y.movedim(len(lead) + axis, -1)
            if factor.signs is not None:
                # Q_f = D·H: x Q_f = (x∘s) H and x Q_fᵀ = (x H)∘s.
                y = hadamard_transform(y) * tensor if transpose else hadamard_transform(y * tensor)
            elif factor.size > 1:
                y = y @ (tensor.T if transpose else tensor)
            y = y.movedim(-1, len(lead) + axis)
        return y.reshape(*lead, self.width)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ Q`` on the last dimension (any leading shape, any float dtype/device)."""
        return self._run(x, transpose=False)

    def apply_transpose(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ Qᵀ`` on the last dimension: the inverse of :meth:`apply`."""
        return self._run(x, transpose=True)

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The dense ``Q`` (width × width), for tests and offline folding into weights."""
        return self.apply(torch.eye(self.width, dtype=dtype))


def orthogonal_transform(width: int, seed: int = 0) -> OrthogonalTransform:
    """The seeded orthogonal transform of ``width``: the same ``(width, seed)`` gives the same ``Q``.

    Factors are drawn in order from one CPU ``torch.Generator`` seeded with
    ``seed``, in float64, so the transform is identical on every machine.
    """
    generator = torch.Generator().manual_seed(int(seed))
    factors = [_draw_factor(size, generator) for size in kronecker_factors(width)]
    return OrthogonalTransform(width=width, seed=int(seed), factors=factors)
