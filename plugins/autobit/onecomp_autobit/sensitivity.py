"""err[l, c] and bits[l, c]: each candidate quantizes each layer once, on its real grid.

The candidate's own ``quantize_layer`` runs on the original weight, so its
group size, symmetry, clipping search or factorization are what is scored,
not a min-max proxy. Candidates that want statistics get what the planning
pass has, shaped to their ``needs().inputs``:

* "full": H = 2·XᵀX/N when the planning pass kept the full input factor
  (``planning_hessian`` full/auto), so GPTQ is scored with its real error
  feedback; else H = diag(2a), where GPTQ's error feedback vanishes and the
  score is its grid's error, weighted;
* "diag": the vector 2a;
* "none": nothing.

Without calibration moments (strategy "ilp") a = 1, i.e. H = 2I and the
score is the plain weight error ‖W − Q_c(W)‖². The predicted loss increase
of Δ = W − Q_c(W) is the Kronecker-factored (K-FAC) Fisher quadratic form
with the factors the planning pass kept: tr(B·Δ·A·Δᵀ) with A = XᵀX/N and
B = GᵀG/N (output gradients), or their diagonals a and b in its place
(Σ_ij b_i·a_j·Δ_ij² when both are diagonal; b = 1 when not collected).
Each candidate reports its bits through ``result.effective_bits(out, in)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from onecomp_core.contract import LayerJob, LayerMoments, Method, ModelWalk

logger = logging.getLogger(__name__)


def planning_hessian(
    kind: str, a: torch.Tensor | None, in_features: int, xtx: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The statistics handed to a candidate while planning (see module docstring)."""
    if kind == "none":
        return None
    if kind == "full" and xtx is not None:
        return 2.0 * xtx.float()
    diag = 2.0 * (a.float() if a is not None else torch.ones(in_features))
    return torch.diag(diag) if kind == "full" else diag


def predicted_error(
    weight: torch.Tensor,
    quantized: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    xtx: torch.Tensor | None = None,
    gtg: torch.Tensor | None = None,
) -> float:
    """Σ_ij b_i·a_j·(W − Ŵ)_ij² (a or b left out when None).

    With ``xtx`` (XᵀX/N) the input factor is the full matrix instead of its
    diagonal a: Σ_i b_i·Δ_i·(XᵀX/N)·Δ_iᵀ; with ``gtg`` (GᵀG/N) too, the
    output factor is full as well: tr(GᵀG/N·Δ·XᵀX/N·Δᵀ) (K-FAC), b unused.
    """
    if xtx is not None:
        d = weight.double() - quantized.double()
        right = d @ xtx.double().to(d.device)
        if gtg is not None:
            return float(((gtg.double().to(d.device) @ right) * d).sum())
        rows = (right * d).sum(1)
        if b is not None:
            rows = rows * b.double().to(d.device)
        return float(rows.sum())
    d2 = (weight.double() - quantized.double()).pow(2)
    if a is not None:
        d2 = d2 * a.double().to(d2.device)[None, :]
    if b is not None:
        d2 = d2 * b.double().to(d2.device)[:, None]
    return float(d2.sum())


@dataclass
class Costs:
    """errors[l][c], bits[l][c] (effective bits per weight) and params[l]."""

    errors: list[list[float]]
    bits: list[list[float]]
    params: list[int]


def score_layer(
    name: str,
    module: nn.Module,
    candidate: Method,
    moments: LayerMoments | None,
    use_b: bool,
    keep: list | None = None,
) -> tuple[float, float]:
    """(predicted error, effective bits) of one candidate on one layer; the weight is kept.

    ``keep``: a list the dequantized weight is appended to (validation reads it)."""
    weight = module.weight
    original = weight.data.clone()
    a = moments.a if moments is not None else None
    xtx = moments.xtx if moments is not None else None
    hessian = planning_hessian(candidate.needs().inputs, a, module.in_features, xtx)
    if hessian is not None:
        hessian = hessian.to(weight.device)
    try:
        with torch.no_grad():
            result = candidate.quantize(LayerJob(name, module, hessian))
    finally:
        weight.data.copy_(original)  # a candidate may have edited the weight in place
    out_features, in_features = original.shape
    bits = result.effective_bits(out_features, in_features)
    if bits is None:
        raise ValueError(
            f"candidate {candidate.method!r} does not report its effective bits "
            "(LayerResult.effective_bits returned None), so AutoBit cannot budget it"
        )
    quantized = result.dequantize(original.device)
    if keep is not None:
        keep.append(quantized.detach().cpu())
    b = moments.b if (moments is not None and use_b) else None
    gtg = moments.gtg if (moments is not None and use_b) else None
    return predicted_error(original, quantized, a, b, xtx, gtg), float(bits)


def score_candidates(
    layers: dict[str, nn.Module],
    candidates: Sequence[Method] | Mapping[str, Sequence[Method]],
    moments: dict[str, LayerMoments] | None,
    use_b: bool = True,
    walk: ModelWalk | None = None,
    keep: dict | None = None,
) -> Costs:
    """Score every candidate on every layer (layers in the given order).

    ``candidates`` is one list for all layers, or per layer name the methods
    that stand for the candidates there (e.g. a per-row twin where the group
    size does not divide the layer's width). A method listed twice for one
    layer (or two equal ones) is scored once. With ``walk`` the layers are scored block by block,
    each block in memory only while its layers are scored (a streamed model's
    weights are on disk until then). ``keep``: a dict that receives every scored
    dequantized weight under (layer name, column index) (for validation only: it
    holds a copy of the model per column).
    """
    rows: dict[str, tuple[list[float], list[float]]] = {}

    def score(names: list[str]) -> None:
        for name in names:
            here = candidates[name] if isinstance(candidates, Mapping) else candidates
            first = [_first_equal(here, c) for c in here]  # equal methods are scored once
            scored: dict[int, tuple[float, float]] = {}
            weights: dict[int, list] = {}
            for k, candidate in enumerate(here):
                if first[k] == k:
                    weights[k] = [] if keep is not None else None
                    scored[k] = score_layer(
                        name,
                        layers[name],
                        candidate,
                        moments.get(name) if moments else None,
                        use_b,
                        weights[k],
                    )
            if keep is not None:
                for k in range(len(here)):
                    keep[(name, k)] = weights[first[k]][0]
            rows[name] = ([scored[f][0] for f in first], [scored[f][1] for f in first])
            logger.debug("%s: errors %s bits %s", name, *rows[name])

    left = list(layers)
    for index, block in enumerate(walk.names if walk is not None else []):
        inside = [n for n in left if n.startswith(block + ".")]
        if inside:
            with walk.block(index):
                score(inside)
            left = [n for n in left if n not in set(inside)]
    score(left)
    return Costs(
        [rows[n][0] for n in layers],
        [rows[n][1] for n in layers],
        [layers[n].weight.numel() for n in layers],
    )


def _first_equal(methods: Sequence[Method], method: Method) -> int:
    """Index of the first of ``methods`` that is ``method`` or equals it (same parameters):
    e.g. a g32 candidate's per-row twin and a per-row candidate given as well."""
    return next(i for i, m in enumerate(methods) if m is method or m == method)
