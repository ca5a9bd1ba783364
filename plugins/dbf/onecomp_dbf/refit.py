"""Closed-form refits of the three vectors with the signs fixed (each step exact, so monotone).

After the ADMM has chosen the signs, a, b and c are refitted in turn by
exact least squares: on the weighted target (:func:`refit_vectors`), or on
the layer's full output error tr((W − Ŵ)·H·(W − Ŵ)ᵀ) when the full input
Hessian is available (:func:`refit_vectors_hessian`).
"""

from __future__ import annotations

import torch

from onecomp_core.kernels import OnDisk

from .factors import Factors, gauge_for_fp16

#: closed-form refits of (a, b, c) once the signs are fixed
REFIT_ROUNDS = 4
_EPS = 1e-12


def refit_vectors(
    target: torch.Tensor,
    sign_a: torch.Tensor,
    sign_b: torch.Tensor,
    a: torch.Tensor,
    c: torch.Tensor,
    b: torch.Tensor,
    rounds: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact block-coordinate least squares of ‖T − diag(a)S_A diag(c) S_B diag(b)‖² over a, b, c."""
    # each (n × m) product is dropped once its sums are taken and multiplied in place (the
    # same values as the out-of-place products): one such matrix beside the target, not five
    for _ in range(rounds):
        right = (c[:, None] * sign_b) * b[None, :]  # (k, m): rows of diag(c) S_B diag(b)
        g = sign_a @ right  # (n, m), Ŵ = diag(a) g
        del right
        norm = g.pow(2).sum(1).clamp_min(_EPS)
        a = g.mul_(target).sum(1) / norm
        del g
        left = a[:, None] * sign_a * c[None, :]  # (n, k)
        h = left @ sign_b  # Ŵ = h diag(b)
        del left
        norm = h.pow(2).sum(0).clamp_min(_EPS)
        b = h.mul_(target).sum(0) / norm
        del h
        sa = a[:, None] * sign_a  # (n, k)
        sb = sign_b * b[None, :]  # (k, m)
        gram = (sa.t() @ sa) * (sb @ sb.t())
        rhs = (sa.t() @ target).mul_(sb).sum(1)
        del sa, sb
        gram.diagonal().add_(_ridge(gram))
        c = torch.linalg.solve(gram, rhs)
    return a, c, b


def refit_vectors_hessian(
    weight: torch.Tensor | OnDisk,
    hessian: torch.Tensor | list[torch.Tensor],
    factors: Factors,
    rounds: int = REFIT_ROUNDS,
) -> Factors:
    """Refit a, b, c (signs fixed) on the full output error tr((W − Ŵ)·H·(W − Ŵ)ᵀ).

    Used when the full input Hessian is available: unlike the diagonal
    weighting it accounts for correlated input channels. Each step is an
    exact least-squares solve, so the error never increases. A one-element
    list hands H over (damped in place, no copy). Besides H the (in × in)
    b-step holds only its Gram matrix (built, damped and factorized in place:
    :func:`_solve_symmetric_`). W is only needed for W·H: a weight waiting on
    disk (:class:`~onecomp_core.kernels.OnDisk`) is read for that product and
    dropped, so the b-step does not hold it beside its Gram matrix (44 MB at a
    2048 × 5632 layer; the same bits).
    """
    with torch.no_grad():
        # on the weight's device, like the fit
        w = (weight.read() if isinstance(weight, OnDisk) else weight).detach().float()
        if isinstance(hessian, list):
            h = hessian.pop().detach().float().to(w.device)
        else:
            h = hessian.detach().float().to(w.device, copy=True)
        h.diagonal().add_(_ridge(h))
        wh = w @ h
        device = w.device
        del w
        a, c, b = (v.to(device, copy=True) for v in (factors.a, factors.c, factors.b))
        s_a, s_b = factors.sign_a.to(device), factors.sign_b.to(device)
        for _ in range(rounds):
            # (n × m) products multiplied in place once their other use is over (the same
            # values as out of place): at most two beside W·H, not four
            g = (s_a * c[None, :]) @ (s_b * b[None, :])  # Ŵ = diag(a)·g
            norm = (g @ h).mul_(g).sum(1).clamp_min(_EPS)
            a = g.mul_(wh).sum(1) / norm
            del g
            hm = (a[:, None] * s_a * c[None, :]) @ s_b  # Ŵ = hm·diag(b)
            gram_b = (hm.t() @ hm).mul_(h)  # H ⊙ (hmᵀ·hm), in place
            rhs_b = hm.mul_(wh).sum(0)
            del hm
            gram_b.diagonal().add_(_ridge(gram_b))
            b = _solve_symmetric_(gram_b, rhs_b)
            del gram_b
            u = a[:, None] * s_a  # (n, k)
            v = s_b * b[None, :]  # (k, m)
            gram_c = (u.t() @ u) * (v @ h @ v.t())
            rhs_c = ((u.t() @ wh) * v).sum(1)
            # dropped before the next round: held, u and v (48 MB for a (k × m) at a 2048 × 5632
            # layer, and the (k × k) Gram) sat beside the next b-step's (in × in) Gram matrix
            del u, v
            gram_c.diagonal().add_(_ridge(gram_c))
            c = torch.linalg.solve(gram_c, rhs_c)
            del gram_c, rhs_c
        a, c, b = gauge_for_fp16(a, c, b)
    return Factors(a=a, sign_a=s_a, c=c, sign_b=s_b, b=b)


def _solve_symmetric_(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """x with gram·x = rhs for a symmetric ``gram``, which it consumes.

    On the CPU LAPACK's symmetric solve (sytrf/sytrs) through SciPy factorizes
    gram in its own memory; ``torch.linalg.solve`` keeps gram and an LU copy,
    a second (in × in) matrix (121 MB for TinyLlama's down_proj). Other
    devices keep torch's.
    """
    if gram.device.type != "cpu":
        return torch.linalg.solve(gram, rhs)
    from scipy.linalg import solve

    # gram is symmetric: its row-major memory read column-major is gram again
    x = solve(gram.numpy().T, rhs.numpy(), assume_a="sym", overwrite_a=True, check_finite=False)
    return torch.from_numpy(x)


def _ridge(gram: torch.Tensor) -> torch.Tensor:
    """The damping added to a Gram matrix's diagonal: 1e-6 of its mean diagonal."""
    return 1e-6 * gram.diagonal().mean().clamp_min(_EPS)
