"""QuIP on one weight matrix: incoherence processing around the LDLQ (= GPTQ) solve.

Chee et al. (2023): rounding is easier when the weights are even in
magnitude and the Hessian has no dominant axis-aligned direction. So

1. rescale the inputs: d_j = (H_jj / ‖W_:,j‖²)^{1/4}, W' = W·diag(d),
   H' = diag(d)⁻¹ H diag(d)⁻¹ (d rounded to its fp16 storage value first);
2. rotate: W_r = Uᵀ W' V and H_r = Vᵀ H' V with seeded orthogonal U (out
   side) and V (in side) from the core's factored transforms (randomized
   Hadamard, Kronecker factors for other widths);
3. quantize W_r against H_r with the GPTQ recursion (LDLQ, with the grids,
   clipping search and act-order of the core's GPTQ solve);
4. keep the codes, d and the two seeds: the layer computes
   y = U·(Q̃·(Vᵀ·(x ⊘ d))) in factored form, the dense weight is
   U Q̃ Vᵀ diag(d)⁻¹.

Row-vector convention of :class:`OrthogonalTransform`: ``apply(x) = x @ Q``.
A side without a transform (``None``) is the identity: with neither
transform nor rescale this is plain LDLQ, i.e. exactly the GPTQ solve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from onecomp_core.kernels import GridSpec, OrthogonalTransform, gptq_quantize, prepare_hessian

#: d is kept within this factor of its geometric mean (fp16 holds it; dead columns stay sane)
_SCALE_RANGE = 1e4


@dataclass
class QuIPOutput:
    """Codes of W_r (out, in) uint8, fp16 scales and uint8 zeros (out, groups), g_idx, d (in,) fp16."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    input_scale: torch.Tensor
    damping: float | None
    fallback: str | None = None


def input_scales(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """d_j = (H_jj / ‖W_:,j‖²)^{1/4}, normalised to geometric mean 1, as fp16 values (float32)."""
    tiny = torch.finfo(torch.float32).tiny
    energy = torch.diagonal(h).double().clamp(min=tiny)
    norms = w.double().square().sum(0).clamp(min=tiny)
    d = (energy / norms) ** 0.25
    d = d / torch.exp(torch.log(d).mean())
    d = d.clamp(1 / _SCALE_RANGE, _SCALE_RANGE)
    return d.to(torch.float16).float()


Transform = OrthogonalTransform | None


def apply(q: Transform, x: torch.Tensor) -> torch.Tensor:
    """x @ Q on the last dimension (x itself when there is no transform)."""
    return x if q is None else q.apply(x)


def apply_transpose(q: Transform, x: torch.Tensor) -> torch.Tensor:
    """x @ Qᵀ on the last dimension (x itself when there is no transform)."""
    return x if q is None else q.apply_transpose(x)


def rotate(w: torch.Tensor, u: Transform, v: Transform) -> torch.Tensor:
    """Uᵀ W V for W (out, in)."""
    return apply(u, apply(v, w).t()).t()


def unrotate(w_r: torch.Tensor, u: Transform, v: Transform) -> torch.Tensor:
    """U W_r Vᵀ: back from the rotated basis."""
    return apply_transpose(u, apply_transpose(v, w_r).t()).t()


def quip_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    u: Transform,
    v: Transform,
    spec: GridSpec,
    *,
    groupsize: int = -1,
    actorder: bool = False,
    percdamp: float = 0.01,
    row_shrinks: Sequence[float] = (),
    rescale: bool = True,
) -> QuIPOutput:
    """Quantize ``weight`` (out, in) given H (in, in) ∝ XᵀX with incoherence processing.

    ``u`` (width out) and ``v`` (width in) are the seeded transforms (None:
    identity); the other arguments configure the GPTQ solve in the rotated basis.
    """
    w, h = prepare_hessian(weight, hessian)
    d = input_scales(w, h) if rescale else torch.ones(w.shape[1], device=w.device)
    d = d.to(w.device)
    w64 = w.double() * d.double()
    h64 = h.double() / d.double().unsqueeze(0) / d.double().unsqueeze(1)
    del w, h
    w_r = rotate(w64, u, v).float()
    h_r = rotate(h64, v, v).float()  # Vᵀ H' V
    if v is not None:  # rounding in the transform may leave it a hair off symmetric
        h_r = (h_r + h_r.t()) / 2
    del w64, h64
    out = gptq_quantize(w_r, h_r, spec, groupsize, actorder, percdamp, row_shrinks=row_shrinks)
    return QuIPOutput(
        codes=out.codes,
        scales=out.scales,
        zeros=out.zeros,
        g_idx=out.g_idx,
        input_scale=d.to(torch.float16).cpu(),
        damping=out.damping,
        fallback=out.fallback,
    )


def dense_weight(
    w_r: torch.Tensor, input_scale: torch.Tensor, u: Transform, v: Transform
) -> torch.Tensor:
    """The (out, in) weight the rotated weight stands for: U W_r Vᵀ diag(d)⁻¹ (float32)."""
    w = unrotate(w_r.double(), u, v)
    return (w / input_scale.double().to(w.device)).float()


def proxy_error(
    weight: torch.Tensor, hessian: torch.Tensor, out: QuIPOutput, u: Transform, v: Transform
) -> float:
    """tr(ΔW H ΔWᵀ) of an output in the original basis (dead inputs neutralised as in the solve)."""
    w, h = prepare_hessian(weight, hessian)
    g = out.g_idx.long()
    q_r = out.scales.float()[:, g] * (out.codes.float() - out.zeros.float()[:, g])
    delta = (w - dense_weight(q_r.to(w.device), out.input_scale.float(), u, v)).double()
    return float(((delta @ h.double()) * delta).sum())
