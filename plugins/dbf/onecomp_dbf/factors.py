"""The DBF representation: Ŵ = diag(a)·S_A·diag(c)·S_B·diag(b), its size in bits, its fp16 gauge.

S_A ∈ {±1}^{n×k} and S_B ∈ {±1}^{k×m} cost k·(n+m) bits; the three vectors
a (n), c (k), b (m) are stored in fp16. The middle dimension k is what a
target number of bits per weight buys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_EPS = 1e-12


@dataclass
class Factors:
    """The five parts of Ŵ = diag(a)·S_A·diag(c)·S_B·diag(b); signs are ±1 float32."""

    a: torch.Tensor  # (n,)
    sign_a: torch.Tensor  # (n, k)
    c: torch.Tensor  # (k,)
    sign_b: torch.Tensor  # (k, m)
    b: torch.Tensor  # (m,)

    def weight(self) -> torch.Tensor:
        """The dense approximation (fp32)."""
        return compose(self.a, self.sign_a, self.c, self.sign_b, self.b)

    def cpu(self) -> Factors:
        """The same factors on the CPU, where results are kept (fitted on a GPU: moved once)."""
        return Factors(
            self.a.cpu(), self.sign_a.cpu(), self.c.cpu(), self.sign_b.cpu(), self.b.cpu()
        )


def compose(
    a: torch.Tensor, sign_a: torch.Tensor, c: torch.Tensor, sign_b: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """diag(a)·S_A·diag(c)·S_B·diag(b) in fp32."""
    left = a.float()[:, None] * sign_a.float() * c.float()[None, :]
    return left @ (sign_b.float() * b.float()[None, :])


def middle_dim(out_features: int, in_features: int, target_bits: float, clamp: bool = False) -> int:
    """k such that the two sign matrices cost k·(n+m) ≈ target_bits·n·m bits.

    Rounded to the nearest integer (not floored), so the binary part is
    within half a step of the target; ``clamp`` caps k at min(n, m) like the
    reference implementation.
    """
    n, m = out_features, in_features
    k = max(1, math.floor(target_bits * n * m / (n + m) + 0.5))
    return min(k, n, m) if clamp else k


def binary_bits(out_features: int, in_features: int, k: int) -> float:
    """Bits per weight of the two sign matrices."""
    return k * (out_features + in_features) / (out_features * in_features)


def total_bits(out_features: int, in_features: int, k: int) -> float:
    """Bits per weight including the three fp16 vectors."""
    n, m = out_features, in_features
    return binary_bits(n, m, k) + 16 * (n + m + k) / (n * m)


def gauge_for_fp16(
    a: torch.Tensor, c: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescale a·λ, c/(λμ), b·μ (same product) so the three vectors share one magnitude."""
    peaks = [v.abs().max().clamp_min(_EPS) for v in (a, c, b)]
    common = (peaks[0] * peaks[1] * peaks[2]) ** (1 / 3)
    lam, mu = common / peaks[0], common / peaks[2]
    return a * lam, c / (lam * mu), b * mu
