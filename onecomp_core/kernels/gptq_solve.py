"""The GPTQ algorithm for one weight matrix: pure functions, tensors in, tensors out.

Columns are quantized one at a time (in act-order when asked); the rounding
error of each column, scaled by the inverse-Hessian Cholesky factor, is fed
back into the columns not yet quantized. Updates inside a block of
``blocksize`` columns are applied eagerly, the rest lazily as one matrix
product per block (Frantar et al., 2022). Group grids are fitted when their
first column comes up, from weights that already carry every earlier update
(including pending lazy ones), with fp16-rounded scales, so the error feedback
matches what inference computes. No value is read back to Python inside the
column loop.

It lives in the kernels because more than one method builds on it: GPTQ
itself, JointQ (which starts from the GPTQ solution) and QuIP (whose LDLQ is
this recursion in a rotated basis).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .gptq_spec import GPTQOutput, GridSpec
from .grid import max_code
from .hessian_inverse import flipped_hessian, inverse_cholesky_flipped, upper_rows


def prepare_hessian(
    weight: torch.Tensor, hessian: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of W (float32) and H with dead inputs (H_jj = 0) neutralised: H_jj = 1, W[:, j] = 0."""
    w = weight.detach().float().clone()
    h = hessian.detach().to(w.device, torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, h


#: float elements of the stacked row candidates in one GPTQ pass on the CPU (16 MB in
#: fp32; a pass holds about four such arrays): larger layers are done in slices of rows,
#: which GPTQ treats independently (the numbers do not depend on the slicing)
_STACK_ELEMENTS = 1 << 22
#: the most elements one pass stacks on a GPU (4 GB per fp32 array)
_STACK_ELEMENTS_GPU = 1 << 30


def stack_elements(device: torch.device) -> int:
    """Elements of stacked rows one GPTQ pass takes on ``device``.

    The column loop launches ~10 small kernels per column and pass. On the
    CPU they are cheap and small slices stay in cache. On a GPU each launch
    costs more than its arithmetic, so slices multiply the time: measured on
    an H200 with Llama-2-7B shapes, a 4096-wide layer's 24 slices took 12 s.
    There a pass takes as many rows as a quarter of the free memory holds
    (four arrays per element), which is usually the whole layer.
    """
    if device.type != "cuda":
        return _STACK_ELEMENTS
    free, _total = torch.cuda.mem_get_info(device)
    return max(_STACK_ELEMENTS, min(_STACK_ELEMENTS_GPU, free // (4 * 4 * 4)))


def _group_size(groupsize: int, n: int) -> int:
    return n if groupsize in (-1, 0) or groupsize > n else groupsize


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor | list[torch.Tensor],
    spec: GridSpec,
    groupsize: int = -1,
    actorder: bool = False,
    percdamp: float = 0.01,
    blocksize: int = 128,
    static_groups: bool = False,
    row_shrinks: Sequence[float] = (),
) -> GPTQOutput:
    """Quantize ``weight`` (out, in) given H = (2/N)·XᵀX (in, in).

    With ``static_groups`` every group grid is fitted up front on the original
    weight in the original column order (g_idx stays monotone even with
    act-order); otherwise groups follow the processing order and are fitted on
    the updated weights. ``row_shrinks`` (several range factors) runs GPTQ
    once per factor on stacked copies of the rows (rows are independent in
    GPTQ) and keeps, per row, the copy with the smallest output error
    ΔHΔᵀ: a clipping search judged by the error GPTQ actually leaves (a
    factor 0 stands for the spec's own per-group search). Falls
    back to round-to-nearest when H cannot be made positive definite or the
    result is not finite, and says so in ``fallback``. A one-item list as
    ``hessian`` hands the matrix over: it is dropped once the inverse factor is
    made, so H and the factor never both outlive that step.
    """
    if isinstance(hessian, list):
        hessian = hessian.pop()
    device = weight.device
    out_f, n = weight.shape
    gs = _group_size(groupsize, n)
    dead = torch.diagonal(hessian).to(device) == 0  # dead inputs (see prepare_hessian)
    diag = torch.diagonal(hessian).to(device, torch.float32).clone()
    diag[diag == 0] = 1.0
    perm = torch.argsort(diag, descending=True) if actorder else torch.arange(n, device=device)
    # J·P·H·Pᵀ·J, built afresh for each try (see inverse_cholesky_flipped); mean(diag) is
    # summed in processing order, as on the permuted matrix. H is held only in ``source``,
    # dropped as soon as a factorization succeeded (before the inverse's temporaries), and
    # the working copy of W is made after the factor: the (in × in) pair is the peak.
    source, hessian = [hessian], None
    inverse, damp = inverse_cholesky_flipped(
        lambda: flipped_hessian(source[0], perm, device),
        percdamp,
        diag[perm].mean(),
        factored=source.clear,
    )
    source.clear()
    if inverse is None:
        return rtn_quantize(weight, diag, spec, groupsize, reason="H not positive definite")
    w = weight.detach().float().clone()
    w[:, dead] = 0.0

    lam = damp * float(diag.mean())
    factors = list(row_shrinks) or None
    step = max(1, stack_elements(device) // (n * len(factors or [0])))
    parts = []
    for r0 in range(0, out_f, step):
        args = (perm, diag, lam, spec, gs, blocksize, static_groups, factors)
        part = _best_candidate(w[r0 : r0 + step], inverse, *args)
        if part is None:
            return rtn_quantize(weight, diag, spec, groupsize, reason="non-finite values in GPTQ")
        parts.append((part[0].to(torch.uint8), *part[1:]))  # codes ≤ 8 bits: exact
    codes, scales, zeros = (torch.cat(t) for t in zip(*parts, strict=True))
    return GPTQOutput(
        codes=codes.to(torch.uint8).cpu(),
        scales=scales.to(torch.float16).cpu(),
        zeros=zeros.to(torch.uint8).cpu(),
        g_idx=_g_idx(perm, gs, static_groups).to(torch.int32).cpu(),
        damping=damp,
    )


def _best_candidate(
    w: torch.Tensor,
    inverse: torch.Tensor,
    perm: torch.Tensor,
    diag: torch.Tensor,
    lam: float,
    spec: GridSpec,
    gs: int,
    blocksize: int,
    static_groups: bool,
    factors: list[float] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """GPTQ on these rows, once per range factor (stacked copies); each row keeps its best copy."""
    rows = w.shape[0]
    count = len(factors) if factors else 1
    shrink = None
    if factors:
        shrink = torch.tensor(factors, device=w.device).repeat_interleave(rows)
    stacked = w.repeat(count, 1)
    run = _run_gptq(stacked, inverse, perm, diag, spec, gs, blocksize, static_groups, shrink)
    if run is None:
        return None
    codes, scales, zeros, damped_loss, delta_sq = run
    if count == 1:
        return codes, scales, zeros
    # δHδᵀ = δ(H + λI)δᵀ − λ‖δ‖²: both terms summed by the column loop (no n³ product)
    err = (damped_loss - lam * delta_sq).view(count, rows)
    pick = err.argmin(dim=0) * rows + torch.arange(rows, device=w.device)
    return codes[pick], scales[pick], zeros[pick]


def _g_idx(perm: torch.Tensor, gs: int, static_groups: bool) -> torch.Tensor:
    """Group of each original column: contiguous when static, else by processing position."""
    positions = torch.arange(len(perm), device=perm.device)
    if static_groups:
        return positions // gs
    return (positions // gs)[torch.argsort(perm)]


def _run_gptq(
    w: torch.Tensor,
    inverse: torch.Tensor,
    perm: torch.Tensor,
    diag: torch.Tensor,
    spec: GridSpec,
    gs: int,
    blocksize: int,
    static_groups: bool,
    shrink: torch.Tensor | None,
) -> tuple[torch.Tensor, ...] | None:
    """The column loop: codes (out, in) in original order, scales, zeros (out, groups), loss, ‖δ‖².

    With Hd = H + λI and Hd⁻¹ = UᵀU, the final error is δ = e·U (e the scaled
    column errors), so δ·Hd·δᵀ = ‖e‖²: each row's damped output error is the
    sum of its squared scaled errors, free to accumulate; ‖δ‖² per row (out,)
    comes from the dequantized columns kept per block.
    """
    out_f, n = w.shape
    n_groups = -(-n // gs)
    static = _fit_groups(w, diag, gs, spec, shrink) if static_groups else None
    # work on Wᵀ (in, out): a column of W is a contiguous row, so updates stream through memory
    wt = w[:, perm].t().contiguous()
    diag_p = diag[perm]
    orig_group = (perm // gs).tolist()
    codes = torch.empty(wt.shape, dtype=torch.uint8, device=wt.device)  # ≤ 8-bit codes, exact
    if static is not None:
        scales, zeros = (t.t().contiguous() for t in static)  # (groups, out)
    else:
        scales = torch.empty(n_groups, out_f, device=w.device)
        zeros = torch.empty_like(scales)
    maxq = max_code(spec.bits)
    loss = torch.zeros(out_f, device=w.device)
    delta_sq = torch.zeros(out_f, device=w.device)

    for b0 in range(0, n, blocksize):
        b1 = min(b0 + blocksize, n)
        upper = upper_rows(inverse, b0, b1)  # rows [b0, b1) of U, all columns
        w1 = wt[b0:b1].clone()
        err1 = torch.empty_like(w1)
        deq1 = torch.empty_like(w1)
        u1 = upper[:, b0:b1]
        # runs of columns that start a group (dynamic groups) or the block
        starts = [b0] + [j for j in range(b0 + 1, b1) if static is None and j % gs == 0]
        for r0, r1 in zip(starts, starts[1:] + [b1], strict=True):
            if static is None and r0 % gs == 0:
                rows = _current_group(wt, w1, err1, upper, b1, r0 - b0, min(r0 + gs, n))
                fitted = spec.fit(rows.t(), diag_p[r0 : r0 + gs], shrink)
                scales[r0 // gs], zeros[r0 // gs] = fitted
            groups = [j // gs for j in range(r0, r1)] if static is None else orig_group[r0:r1]
            with _single_thread(w1.device):
                for j, g in zip(range(r0, r1), groups, strict=True):
                    i = j - b0
                    s, z = scales[g], zeros[g]
                    row = w1[i]
                    q = torch.round(row / s).add_(z).clamp_(0, maxq)
                    codes[j] = q
                    deq = torch.mul(q - z, s, out=deq1[i])
                    e = torch.div(row - deq, u1[i, i], out=err1[i])
                    if i + 1 < b1 - b0:
                        w1[i + 1 :].addcmul_(u1[i, i + 1 :, None], e, value=-1.0)
        loss.add_(err1.square().sum(dim=0))
        delta_sq.add_((w[:, perm[b0:b1]].t() - deq1).square_().sum(dim=0))
        if b1 < n:
            wt[b1:].addmm_(upper[:, b1:].t(), err1, alpha=-1.0)

    if not bool(torch.isfinite(loss).all()):  # a NaN or inf anywhere in a row reaches its loss
        return None
    return codes[torch.argsort(perm)].t(), scales.t(), zeros.t(), loss, delta_sq


@contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run the per-column ops on one CPU thread.

    They touch a few thousand numbers each; with a thread pool every op pays a
    fork/join, which dominates on a busy machine (measured 5× slower).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _current_group(
    wt: torch.Tensor,
    w1: torch.Tensor,
    err1: torch.Tensor,
    upper: torch.Tensor,
    b1: int,
    i: int,
    end: int,
) -> torch.Tensor:
    """Up-to-date rows [b0+i, end) of Wᵀ: the block's are current, later ones get pending updates.

    ``upper`` holds the block's rows of U (from b0 on), all columns.
    """
    b0 = b1 - w1.shape[0]
    inner = w1[i : min(end, b1) - b0]
    if end <= b1:
        return inner
    outer = wt[b1:end]
    if i > 0:
        outer = outer - upper[:i, b1:end].t() @ err1[:i]
    return torch.cat([inner, outer], dim=0)


def _fit_groups(
    w: torch.Tensor,
    diag: torch.Tensor,
    gs: int,
    spec: GridSpec,
    shrink: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) of shape (out, groups) for contiguous groups of the given weight."""
    pairs = [spec.fit(w[:, s : s + gs], diag[s : s + gs], shrink) for s in range(0, w.shape[1], gs)]
    return torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)


def rtn_quantize(
    weight: torch.Tensor,
    diag: torch.Tensor | None,
    spec: GridSpec,
    groupsize: int = -1,
    reason: str | None = None,
) -> GPTQOutput:
    """Round to nearest on the same grids (the fallback, and the baseline GPTQ must beat)."""
    w = weight.detach().float()
    n = w.shape[1]
    gs = _group_size(groupsize, n)
    weights = diag if diag is not None else torch.ones(n, device=w.device)
    scales, zeros = _fit_groups(w, weights, gs, spec)
    g = torch.arange(n, device=w.device) // gs
    s, z = scales[:, g], zeros[:, g]
    codes = torch.round(w / s).add_(z).clamp_(0, max_code(spec.bits))
    codes = torch.nan_to_num(codes, nan=0.0)
    return GPTQOutput(
        codes=codes.to(torch.uint8).cpu(),
        scales=scales.to(torch.float16).cpu(),
        zeros=zeros.to(torch.uint8).cpu(),
        g_idx=g.to(torch.int32).cpu(),
        damping=None,
        fallback=None if reason is None else f"{reason}: rounded to nearest",
    )


def dequantize(out: GPTQOutput) -> torch.Tensor:
    """The dense (out, in) float32 weight the codes stand for."""
    g = out.g_idx.long()
    s = out.scales.float()[:, g]
    z = out.zeros.float()[:, g]
    return s * (out.codes.float() - z)
