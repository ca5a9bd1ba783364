"""JointQ on one weight matrix: from the GPTQ solution, local search over codes and joint scale refits.

The objective of row i is f_i = (w_i − ŵ_i) H̃ (w_i − ŵ_i)ᵀ with
H̃ = H + λ·mean(diag H)·R (R = I, or diag((H_jj / mean H)^γ)): the layer's
output error plus a weighted weight error that keeps the solution close to
W where the calibration data say little. Zero points stay those of the
GPTQ start; codes move by local search, group by group, against the
residual the other groups leave; then every scale of a row is refitted
jointly by least squares. Rows are independent: a row stops when a whole
pass no longer lowers its error (the reference stops all rows once 10 %
have converged). Groups are whatever ``g_idx`` says, so group sizes that
do not divide the width (a shorter last group) and act-order need nothing
special. Everything runs in float64 on the weight's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from onecomp_core.kernels import GPTQOutput, GridSpec, gptq_quantize, max_code, prepare_hessian

from .search import best_scale, joint_scales, local_search, row_errors

#: rows per batched joint refit (its (rows, m, groups) temporaries bound the memory)
_REFIT_ELEMENTS = 1 << 24
#: a row is active while a pass lowers its error by more than this fraction
_PASS_GAIN = 1e-9


@dataclass
class JointQOutput:
    """Codes (out, in) uint8, fp16 scales and uint8 zeros (out, groups), g_idx, and what it achieved."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    damping: float | None
    passes: int
    start_error: float  # Σ f_i / Σ w_i H̃ w_iᵀ of the GPTQ start
    final_error: float  # the same after JointQ
    fallback: str | None = None


def regularised(h: torch.Tensor, lam: float, mode: str, gamma: float) -> torch.Tensor:
    """H̃ = H + λ·mean(diag H)·R: R = I ("identity") or diag((H_jj / mean H)^γ) ("diagonal")."""
    diag = torch.diagonal(h)
    mean = diag.mean()
    if mode == "identity":
        weights = torch.ones_like(diag)
    else:
        weights = (diag / mean).clamp(min=0) ** gamma
    return h + torch.diag_embed(lam * mean * weights)


def jointq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: GridSpec,
    groupsize: int = -1,
    actorder: bool = False,
    lam: float = 0.3,
    mode: str = "diagonal",
    gamma: float = 0.5,
    percdamp: float = 0.01,
    row_shrinks: Sequence[float] = (),
    max_passes: int = 20,
    moves_per_column: int = 10,
    multistart: bool = False,
) -> JointQOutput:
    """Quantize ``weight`` (out, in) given H (in, in) ∝ XᵀX; see the module docstring.

    ``spec``, ``groupsize``, ``actorder``, ``percdamp`` and ``row_shrinks``
    configure the GPTQ start (run on H̃); ``max_passes`` bounds the passes
    over all groups and ``moves_per_column`` the local-search steps per group
    (× its width). With ``multistart`` the search runs from the GPTQ solution
    of every range factor in ``row_shrinks`` (each with its own zero points),
    and each row keeps its best end point: the scale is refitted anyway, so a
    wider start range can end lower than the start GPTQ judged best.
    """
    w32, h32 = prepare_hessian(weight, hessian)
    hr32 = regularised(h32, lam, mode, gamma)
    starts = [[f] for f in row_shrinks] if multistart and row_shrinks else [list(row_shrinks)]
    w, hr = w32.double(), hr32.double()
    best = None
    for shrinks in starts:
        start = gptq_quantize(w32, hr32, spec, groupsize, actorder, percdamp, row_shrinks=shrinks)
        run = _search(w, hr, start, spec.bits, max_passes, moves_per_column)
        if best is None:
            best = run
            continue
        better = run.row_final < best.row_final
        for name in ("codes", "scales", "zeros", "row_final"):
            getattr(best, name)[better] = getattr(run, name)[better]
        best.row_start = torch.minimum(best.row_start, run.row_start)
        best.passes = max(best.passes, run.passes)
    energy = ((w @ hr) * w).sum().clamp(min=torch.finfo(torch.float64).tiny)
    return JointQOutput(
        codes=best.codes.cpu(),
        scales=best.scales.cpu(),
        zeros=best.zeros.cpu(),
        g_idx=start.g_idx,
        damping=start.damping,
        passes=best.passes,
        start_error=float(best.row_start.sum() / energy),
        final_error=float(best.row_final.sum() / energy),
        fallback=start.fallback,
    )


@dataclass
class _Run:
    """One search from one GPTQ start: results and per-row errors on the weight's device."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    row_start: torch.Tensor
    row_final: torch.Tensor
    passes: int


def _search(
    w: torch.Tensor,
    hr: torch.Tensor,
    start: GPTQOutput,
    bits: int,
    max_passes: int,
    moves_per_column: int,
) -> _Run:
    """Passes of group local search and joint refits from ``start`` (float64 ``w``, ``hr``)."""
    dev = w.device
    g = start.g_idx.long().to(dev)
    zp = start.zeros.double().to(dev)
    s = start.scales.double().to(dev)
    z = start.codes.double().to(dev) - zp[:, g]
    lo, hi = -zp, max_code(bits) - zp
    n_groups = s.shape[1]
    cols = [(g == t).nonzero().flatten() for t in range(n_groups)]

    c = w @ hr
    w_hat = s[:, g] * z
    f_start = row_errors(w, w_hat, hr)
    f = f_start.clone()
    p = w_hat @ hr  # Ŵ H̃, kept up to date as groups change
    active = torch.arange(w.shape[0], device=dev)
    passes = 0
    while passes < max_passes and active.numel():
        passes += 1
        for t, idx in enumerate(cols):
            r = hr[idx][:, idx]
            old = w_hat[active][:, idx]
            h = c[active][:, idx] - p[active][:, idx] + old @ r
            bounds = lo[active, t : t + 1], hi[active, t : t + 1]
            zt = local_search(z[active][:, idx], *bounds, h, r, moves_per_column * len(idx))
            st = best_scale(zt, h, r, s[active, t])
            new = st.unsqueeze(1) * zt
            p[active] += (new - old) @ hr[idx]
            w_hat[active.unsqueeze(1), idx] = new
            z[active.unsqueeze(1), idx] = zt
            s[active, t] = st
        if n_groups > 1:
            _refit(active, z, s, w_hat, p, w, g, n_groups, hr, c)
        f_new = row_errors(w[active], w_hat[active], hr)
        moved = f_new < f[active] * (1 - _PASS_GAIN)
        f[active] = f_new
        active = active[moved]

    scales16 = _fp16(s)
    w_hat = scales16.double()[:, g] * z
    f_final = row_errors(w, w_hat, hr)
    keep_start = f_final > f_start  # fp16 rounding must not lose to the start
    codes = (z + zp[:, g]).round().clamp(0, max_code(bits)).to(torch.uint8)
    codes[keep_start] = start.codes.to(dev)[keep_start]
    scales16[keep_start] = start.scales.to(dev)[keep_start]
    final = torch.where(keep_start, f_start, f_final)
    return _Run(codes, scales16, start.zeros.to(dev).clone(), f_start, final, passes)


def _refit(
    active: torch.Tensor,
    z: torch.Tensor,
    s: torch.Tensor,
    w_hat: torch.Tensor,
    p: torch.Tensor,
    w: torch.Tensor,
    g: torch.Tensor,
    n_groups: int,
    hr: torch.Tensor,
    c: torch.Tensor,
) -> None:
    """Joint least-squares scales for the ``active`` rows, kept where they lower f (in place)."""
    m = w.shape[1]
    step = max(1, _REFIT_ELEMENTS // (m * n_groups))
    for r0 in range(0, active.numel(), step):
        rows = active[r0 : r0 + step]
        fitted = joint_scales(z[rows], g, n_groups, hr, c[rows])
        candidate = fitted[:, g] * z[rows]
        before = row_errors(w[rows], w_hat[rows], hr)
        after = row_errors(w[rows], candidate, hr)
        better = torch.isfinite(after) & (after < before)
        rows = rows[better]
        s[rows] = fitted[better]
        w_hat[rows] = candidate[better]
        p[rows] = candidate[better] @ hr


def _fp16(s: torch.Tensor) -> torch.Tensor:
    """Scales as stored: fp16, sign kept (least-squares scales may be negative), never ±inf."""
    limit = torch.finfo(torch.float16).max
    return s.clamp(-limit, limit).to(torch.float16)
