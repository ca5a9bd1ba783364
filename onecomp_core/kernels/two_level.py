"""Choosing between two levels per weight with error feedback (GPTQ's column sweep, 1 bit).

Binary and two-level methods (CQ, ARB, ...) approximate every weight W_ij by
one of two values lo_ij, hi_ij (a row's two cluster means, μ_i ± α_i, or
±r_i·c_j). Picking the nearer one per weight minimises the weight error;
minimising the layer's output error ‖(W − Ŵ)Xᵀ‖² instead, the columns are
visited in order and each column's rounding error is pushed onto the columns
not yet chosen through the inverse Hessian, exactly as GPTQ does for an
integer grid (Frantar et al., 2023): with H = XᵀX (any positive multiple)
and U the upper Cholesky factor of H⁻¹, column j's error e = (w_j − q_j)/U_jj
updates W[:, k] −= e·U_jk for k > j. Blocks of columns are updated lazily
(one matrix product per block). float64 throughout.
"""

from __future__ import annotations

import torch


def inverse_factor(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """U, the upper Cholesky factor of (H + λI)⁻¹ with λ = damp·mean(diag H), float64.

    Dead inputs (H_jj = 0) get H_jj = 1, so their columns are chosen by
    distance alone. The damping grows tenfold until the factorisation works.
    """
    h = hessian.to(torch.float64).clone()
    diag = h.diagonal()
    dead = diag <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    diag[dead] = 1
    base = diag.mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(8):
        lam = damp * base * (10.0**attempt)
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper
    raise FloatingPointError("the input second moments are not positive definite even damped")


def feedback_codes(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    damp: float = 0.01,
    block: int = 128,
) -> torch.Tensor:
    """(p, m) bool codes, True where ``high`` is chosen, by the error-feedback sweep.

    ``low``/``high`` broadcast to ``weight`` ((p, 1) per row, (1, m) or
    (p, m) per weight); ``hessian`` is (m, m). Each weight, after the
    feedback of the earlier columns, takes the nearer of its two levels.
    """
    w = weight.to(torch.float64).clone()
    p, m = w.shape
    lo = low.to(torch.float64).expand(p, m)
    hi = high.to(torch.float64).expand(p, m)
    u = inverse_factor(hessian.to(w.device), damp)
    codes = torch.zeros(p, m, dtype=torch.bool, device=w.device)
    for start in range(0, m, block):
        end = min(start + block, m)
        part = w[:, start:end].clone()
        errors = torch.empty_like(part)
        ub = u[start:end, start:end]
        for j in range(end - start):
            col = part[:, j]
            up = (col - hi[:, start + j]).abs() < (col - lo[:, start + j]).abs()
            chosen = torch.where(up, hi[:, start + j], lo[:, start + j])
            codes[:, start + j] = up
            err = (col - chosen) / ub[j, j]
            part[:, j:] -= err[:, None] * ub[j, j:][None, :]
            errors[:, j] = err
        if end < m:
            w[:, end:] -= errors @ u[start:end, end:]
    return codes
