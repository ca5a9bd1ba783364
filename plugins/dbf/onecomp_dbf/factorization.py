"""Double binary factorization of one weight matrix (pure functions, tensors in and out).

W (n × m) ≈ diag(a)·S_A·diag(c)·S_B·diag(b), S_A ∈ {±1}^{n×k}, S_B ∈ {±1}^{k×m},
fitted on the weighted objective of :mod:`onecomp_dbf.objective`. Steps:

1. optional Sinkhorn balancing of the weighted target (a preconditioner; the
   weights stay in the target, the balancing scales are undone exactly);
2. alternating minimisation over two real factors P (n × k), Q (k × m), each
   constrained to "sign × rank-1 magnitude" (SVID) by a 3-step scaled ADMM;
3. split the factors into signs and vectors, then refit the three vectors in
   closed form on the weighted objective with the signs fixed (monotone);
4. gauge the vectors so they all fit fp16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from onecomp_core.kernels import OnDisk, small_problem_threads

from .config import FitSettings
from .factors import Factors, gauge_for_fp16
from .objective import divide_outer_, sinkhorn_balance
from .refit import REFIT_ROUNDS, refit_vectors

#: ADMM steps per factor update (the method's "3-step" ADMM)
ADMM_STEPS = 3
#: power iterations per SVID projection (warm-started from the previous call)
POWER_ITERS = 2
#: above this syevd workspace (2·m² floats) a CPU eigh uses syevr (see :func:`_eigh_`)
EVD_WORKSPACE_BYTES = 64 << 20
_EPS = 1e-12


# -- SVID projection and ADMM --------------------------------------------------------
def svid_project(x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Π(X) = sign(X) ⊙ σ·u·vᵀ with (σ, u, v) the top singular triple of |X|.

    ``v`` warm-starts the power iterations; returns (Π(X), the new v).
    """
    mag = x.abs()
    for _ in range(POWER_ITERS):
        u = mag @ v
        u = u / u.norm().clamp_min(_EPS)
        v = mag.t() @ u
        v = v / v.norm().clamp_min(_EPS)
    sigma = u @ mag @ v
    del mag
    sign = torch.where(x >= 0, 1.0, -1.0)
    return sign.mul_(sigma * u[:, None] * v[None, :]), v


@dataclass
class _FactorState:
    """ADMM state of one factor Y (k × c): projected iterate Z, scaled dual U, power vector, ρ multiplier."""

    z: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    rho_mult: float = 1.0


def _admm_update(
    target: torch.Tensor,
    other: torch.Tensor,
    state: _FactorState,
    rho: float,
    reg: float,
    adaptive: bool,
    right: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Update Y in min ½‖(T − F·Y)·L‖² + ½·reg·‖Y‖², Y = Π(Y), with F = ``other`` (r × k).

    ``right`` = (eigenvalues, eigenvectors) of C = L·Lᵀ (c × c), the input
    correlation of the full Hessian; None means C = I. With C the normal
    equations are the Sylvester equation FᵀF·Y·C + (reg+ρ)·Y = FᵀT·C + ρ(Z−U),
    solved in the two eigenbases. F is normalised to unit columns (d); the
    state lives in the factor's own scale and is mapped there and back.
    """
    d = other.norm(dim=0).clamp_min(_EPS)
    f = other / d[None, :]
    k = f.shape[1]
    gram = f.t() @ f
    ft_t = f.t() @ target
    del f
    # into the factor's scale in place: the state is replaced at the end (k × c each)
    z = state.z.mul_(d[:, None])
    u = state.u.mul_(d[:, None])
    state.z = state.u = None
    if right is not None:
        e_left, v_left = torch.linalg.eigh(gram)
        e_left = e_left.clamp_min(0)
        e_right, v_right = right
        # Vₗᵀ(FᵀT)V_r into FᵀT's memory (dead once the first product is made): two (k × c)
        # matrices at once, not three; the same products, so the same bits
        base = torch.matmul(v_left.t() @ ft_t, v_right, out=ft_t)
        del ft_t
        base.mul_(e_right[None, :])
    current = None
    # every (k × c) step in place where that keeps the bits (a + b = b + a, a·b = b·a), each
    # operand dropped once used, products written into a dead operand's memory: the
    # Sylvester branch holds 4 such matrices (Z or U, the base, two products), not ~12; the
    # inverse branch 4 (FᵀT, U, the right-hand side, Y), not 6
    for _ in range(ADMM_STEPS):
        r = rho * state.rho_mult
        diff = z - u
        if not adaptive:
            z = None  # replaced by the projection below
        if right is not None:
            half = v_left.t() @ diff
            rot = torch.matmul(half, v_right, out=diff)  # Vₗᵀ(Z − U)V_r, where Z − U was
            del half, diff
            rot.mul_(r).add_(base)  # base + r·Vₗᵀ(Z − U)V_r, over eₗ·e_rᵀ + reg + r:
            _divide_by_spectrum_(rot, e_left, e_right, reg, r)
            left = v_left @ rot
            y = torch.matmul(left, v_right.t(), out=rot)
            del left, rot
        else:
            if current != r:
                inv = torch.linalg.inv(gram + (reg + r) * torch.eye(k, device=gram.device))
                current = r
            y = inv @ diff.mul_(r).add_(ft_t)  # FᵀT + r(Z − U), in Z − U's memory
            del diff
        if adaptive:
            z_old = z
            z, state.v = svid_project(y + u, state.v)
            u = u + y - z
            primal = (y - z).norm()
            dual = r * (z - z_old).norm()
            if primal > 10 * dual:
                state.rho_mult *= 2
                u = u / 2
            elif dual > 10 * primal:
                state.rho_mult /= 2
                u = u * 2
        else:
            shifted = y.add_(u)  # Y + U (= U + Y)
            del y, u
            z, state.v = svid_project(shifted, state.v)
            u = shifted.sub_(z)  # U + Y − Z
            del shifted
    state.z = z.div_(d[:, None])
    state.u = u.div_(d[:, None])


def _divide_by_spectrum_(
    x: torch.Tensor, e_left: torch.Tensor, e_right: torch.Tensor, reg: float, r: float
) -> None:
    """x ← x / (eₗ·e_rᵀ + reg + r) in place, a band of rows at a time.

    The (k × c) divisor is never held whole; each element is the same
    ((eₗᵢ·e_rⱼ) + reg) + r as the whole matrix's, so the same bits.
    """
    rows = max(1, (1 << 22) // max(1, x.shape[1]))
    for start in range(0, x.shape[0], rows):
        band = slice(start, start + rows)
        divisor = e_left[band, None] * e_right[None, :]
        x[band].div_(divisor.add_(reg).add_(r))


def rho_schedule(step: int, iters: int) -> float:
    """Cubic warm-up of the ADMM penalty from ~0 to 1."""
    return max(((step + 1) / iters) ** 3, 1e-4)


def _right_basis(
    correlation: torch.Tensor | list[torch.Tensor], bv: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(eigenvalues e, eigenvectors V) of the balanced, normalised C, and √e (L = V·diag(√e)).

    A one-element list hands C over: it is scaled in place and its memory
    becomes V (:func:`_eigh_`); Lᵀ is applied by :func:`_times_lt`.
    """
    if isinstance(correlation, list):
        corr = correlation.pop().float().to(bv.device)
    else:
        corr = correlation.float().to(bv.device, copy=True)
    divide_outer_(corr, bv)
    corr.div_(corr.diagonal().mean().clamp_min(_EPS))
    e, v = _eigh_(corr)
    del corr
    e = e.clamp_min(1e-6 * e.max())
    return (e, v), e.sqrt()


def _eigh_(corr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric ``corr``, which it consumes.

    On the CPU, LAPACK through SciPy works in C's own memory.
    ``torch.linalg.eigh`` keeps C, a copy that becomes the eigenvectors and
    the workspace: for a 5632² C (TinyLlama's down_proj) 371 MB above C.
    Divide and conquer (syevd) writes the eigenvectors over C but needs a
    2·m² workspace (276 MB above C); the relatively robust representations
    (syevr) need only the m² eigenvectors beside C (127 MB), at ~1.35× the
    time and an orthogonality of ~1e-5 instead of ~1e-6 in float32
    (``python benchmarks/dbf_solve_memory.py --eigh torch|evd|evr``). So
    syevr where the workspace would pass :data:`EVD_WORKSPACE_BYTES`, syevd
    below (small layers keep their bits). Other devices keep torch's.
    """
    if corr.device.type != "cpu":
        return torch.linalg.eigh(corr)
    from scipy.linalg import eigh  # only a CPU solve with a full H needs it

    m = corr.shape[0]
    driver = "evr" if 2 * m * m * corr.element_size() > EVD_WORKSPACE_BYTES else "evd"
    # C is symmetric, so its row-major memory read column-major (the LAPACK order) is C again
    e, v = eigh(corr.numpy().T, lower=True, overwrite_a=True, check_finite=False, driver=driver)
    return torch.from_numpy(e), torch.from_numpy(v)


def _times_lt(
    v: torch.Tensor, root: torch.Tensor, x: torch.Tensor, block: int = 512
) -> torch.Tensor:
    """Lᵀ·X with Lᵀ = (V·diag(√e))ᵀ, made ``block`` rows of Lᵀ at a time.

    Lᵀ is never held whole (it would be a second (m × m) matrix next to V
    through the whole ADMM); each row block is the same products as the
    whole matrix's rows, so the same bits.
    """
    out = torch.empty(v.shape[1], x.shape[1], device=x.device)
    for start in range(0, v.shape[1], block):
        rows = slice(start, start + block)
        torch.matmul((v[:, rows] * root[None, rows]).t(), x, out=out[rows])
    return out


def _split_svid(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z = sign ⊙ x·yᵀ → (sign, x, y) with x, y ≥ 0 (|Z| is rank one, one power step is exact)."""
    sign = torch.where(z >= 0, 1.0, -1.0)
    mag = z.abs()
    y = mag.sum(0)
    y = y / y.norm().clamp_min(_EPS)
    x = mag @ y
    return sign, x, y


class _Targets:
    """The ADMM's two targets: the balanced W (n × m) for Q and its transform (m × n) for P.

    ``aside``: both wait in files and each read gives a new tensor that the update drops,
    so one (n × m) matrix is resident at a time, not two (44 MB at 2048 × 5632).
    """

    def __init__(self, balanced: torch.Tensor, transposed: torch.Tensor, aside: bool) -> None:
        if aside:
            self._q, self._p = OnDisk(balanced), OnDisk(transposed)
        else:
            self._q, self._p = balanced, transposed

    def q(self) -> torch.Tensor:
        return self._q.read() if isinstance(self._q, OnDisk) else self._q

    def p(self) -> torch.Tensor:
        return self._p.read() if isinstance(self._p, OnDisk) else self._p


def _weighted(w: torch.Tensor, r: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The weighted target diag(r)·W·diag(s)."""
    return r[:, None] * w * s[None, :]


# -- the whole fit ---------------------------------------------------------------------
def factorize(
    weight: torch.Tensor | OnDisk,
    k: int,
    settings: FitSettings,
    col_scale: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    correlation: torch.Tensor | list[torch.Tensor] | None = None,
) -> Factors:
    """Fit W ≈ diag(a)·S_A·diag(c)·S_B·diag(b) minimising ‖diag(r)(W − Ŵ)diag(s)·L‖².

    ``col_scale`` s (m,) and ``row_scale`` r (n,) default to ones;
    ``correlation`` C = L·Lᵀ (m × m, see :func:`~onecomp_dbf.objective.input_correlation`) defaults
    to the identity (the diagonal objective); a one-element list hands C over
    (scaled in place, freed once its eigenbasis is made). ``weight`` may wait on disk
    (:class:`~onecomp_core.kernels.OnDisk`): it is read to make the target and again for the
    refit, and not held through the eigendecomposition and the ADMM. The result depends only
    on the inputs and ``settings.seed`` (a private generator).
    """
    n, m = weight.shape
    with torch.no_grad(), small_problem_threads(n * m * k):
        return _factorize(weight, k, settings, col_scale, row_scale, correlation)


def _dense(weight: torch.Tensor | OnDisk) -> torch.Tensor:
    return (weight.read() if isinstance(weight, OnDisk) else weight).detach().float()


def _factorize(
    weight: torch.Tensor | OnDisk,
    k: int,
    settings: FitSettings,
    col_scale: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    correlation: torch.Tensor | list[torch.Tensor] | None = None,
) -> Factors:
    # on the weight's device (a GPU solves there); the same operations as on the CPU
    device = torch.device("cpu") if isinstance(weight, OnDisk) else weight.device
    n, m = weight.shape
    s = torch.ones(m, device=device) if col_scale is None else col_scale.float().to(device)
    r = torch.ones(n, device=device) if row_scale is None else row_scale.float().to(device)
    target = _weighted(_dense(weight), r, s) if settings.use_balancing else None
    if target is not None:
        bu, bv = sinkhorn_balance(
            target, settings.balance_iters, settings.balance_alpha, settings.balance_mode
        )
    else:
        bu, bv = torch.ones(n, device=device), torch.ones(m, device=device)
    right = root = None
    if correlation is not None:  # first: its eigh (C, eigenvectors, 2·m² workspace) is the peak
        right, root = _right_basis(correlation, bv)
    if target is None:  # made after the eigh when balancing did not need it
        target = _weighted(_dense(weight), r, s)
    balanced = bu[:, None] * target * bv[None, :]
    del target  # rebuilt (the same bits) for the refit
    scale = balanced.norm() / math.sqrt(n * m) if balanced.abs().max() > 0 else 1.0
    balanced = balanced / scale

    gen = torch.Generator().manual_seed(settings.seed)  # drawn on the CPU: the same start anywhere
    p0 = (torch.randn(n, k, generator=gen) / math.sqrt(k)).to(device)
    q0 = torch.randn(k, m, generator=gen).to(device)
    # P is stored transposed (k × n) so both factors are updated by the same routine
    p_z, vp = svid_project(p0.t().contiguous(), torch.ones(n, device=device) / math.sqrt(n))
    q_z, vq = svid_project(q0, torch.ones(m, device=device) / math.sqrt(m))
    del p0, q0
    p_state = _FactorState(p_z, torch.zeros(k, n, device=device), vp)
    q_state = _FactorState(q_z, torch.zeros(k, m, device=device), vq)
    del p_z, q_z
    target_t = (
        balanced.t().contiguous() if right is None else _times_lt(right[1], root, balanced.t())
    )
    # with W waiting on disk the two (n × m) targets take turns there too: each update reads
    # the one it uses (the same bytes, ~40 ms a read at 2048 × 5632 against seconds of work)
    targets = _Targets(balanced, target_t, aside=isinstance(weight, OnDisk))
    del balanced, target_t
    adaptive = settings.use_adaptive_rho
    for step in range(settings.iters):
        rho = rho_schedule(step, settings.iters)
        _admm_update(targets.q(), p_state.z.t(), q_state, rho, settings.reg, adaptive, right)
        other = q_state.z.t() if right is None else _times_lt(right[1], root, q_state.z.t())
        _admm_update(targets.p(), other, p_state, rho, settings.reg, adaptive)
        del other
    del targets, right, root

    sign_a, x_p, y_p = _split_svid(p_state.z.t())
    sign_b, x_q, y_q = _split_svid(q_state.z)
    del p_state, q_state
    # undo the balancing, then refit the vectors on the true (weighted) objective
    a = x_p * scale / bu
    c = y_p * x_q
    b = y_q / bv
    a, c, b = refit_vectors(_weighted(_dense(weight), r, s), sign_a, sign_b, a, c, b, REFIT_ROUNDS)
    a, c, b = gauge_for_fp16(a / r, c, b / s)
    return Factors(a=a, sign_a=sign_a, c=c, sign_b=sign_b, b=b)
