"""QuIP's incoherence processing against explicit dense matrices on small layers."""

from __future__ import annotations

import pytest
import torch
from onecomp_core.kernels import GridSpec, gptq_quantize, orthogonal_transform

from onecomp_quip.incoherence import dense_weight, input_scales, quip_quantize, rotate, unrotate

SPEC = GridSpec(bits=3, sym=False, clip_grid=20, min_zero=1)


def _problem(out_f: int = 12, n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outlier input columns and outlier weight columns: what incoherence processing is for."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, n, generator=g) * torch.exp(0.5 * torch.randn(1, n, generator=g))
    w[:, :2] *= 8
    x = torch.randn(400, n, generator=g) * torch.exp(torch.randn(1, n, generator=g))
    return w, 2 * x.t() @ x / 400


@pytest.mark.parametrize(("out_f", "n"), [(12, 40), (16, 64), (6, 43)])
def test_rotations_match_the_dense_matrices(out_f: int, n: int) -> None:
    u, v = orthogonal_transform(out_f, 1), orthogonal_transform(n, 0)
    qu, qv = u.matrix(), v.matrix()
    w = torch.randn(out_f, n, dtype=torch.float64)
    assert torch.allclose(rotate(w, u, v), qu.t() @ w @ qv, atol=1e-10)
    assert torch.allclose(unrotate(rotate(w, u, v), u, v), w, atol=1e-10)


def test_input_scales_follow_the_formula() -> None:
    w, h = _problem()
    d = input_scales(w, h)
    raw = (torch.diagonal(h).double() / w.double().square().sum(0)) ** 0.25
    expected = raw / torch.exp(torch.log(raw).mean())
    assert torch.allclose(d.double(), expected, rtol=1e-3)
    assert torch.equal(d, d.half().float())  # what is stored is what was used


def test_codes_stand_for_the_dense_weight_through_explicit_matrices() -> None:
    w, h = _problem()
    u, v = orthogonal_transform(12, 1), orthogonal_transform(40, 0)
    out = quip_quantize(w, h, u, v, SPEC, actorder=True, row_shrinks=[0.0, 1.0])
    g = out.g_idx.long()
    q_r = out.scales.float()[:, g] * (out.codes.float() - out.zeros.float()[:, g])
    d = out.input_scale.double()
    expected = u.matrix() @ q_r.double() @ v.matrix().t() / d
    assert torch.allclose(dense_weight(q_r, out.input_scale, u, v).double(), expected, atol=1e-5)
    # the rotated problem's error is the original problem's error
    w_r = u.matrix().t() @ (w.double() * d) @ v.matrix()
    h_r = v.matrix().t() @ (h.double() / d / d.unsqueeze(1)) @ v.matrix()
    delta_r, delta = w_r - q_r.double(), w.double() - expected
    rotated = torch.trace(delta_r @ h_r @ delta_r.t())
    assert torch.allclose(rotated, torch.trace(delta @ h.double() @ delta.t()), rtol=1e-6)


def test_incoherence_beats_plain_gptq_on_outlier_columns() -> None:
    w, h = _problem(seed=2)
    u, v = orthogonal_transform(12, 1), orthogonal_transform(40, 0)
    quip = quip_quantize(w, h, u, v, SPEC, actorder=True)
    g = quip.g_idx.long()
    q_r = quip.scales.float()[:, g] * (quip.codes.float() - quip.zeros.float()[:, g])
    w_quip = dense_weight(q_r, quip.input_scale, u, v)
    plain = gptq_quantize(w, h, SPEC, actorder=True)
    g = plain.g_idx.long()
    w_gptq = plain.scales.float()[:, g] * (plain.codes.float() - plain.zeros.float()[:, g])

    def err(w_hat: torch.Tensor) -> float:
        delta = w - w_hat
        return float(torch.trace(delta @ h @ delta.t()))

    assert err(w_quip) < 0.5 * err(w_gptq)


def test_same_seeds_same_codes() -> None:
    w, h = _problem()
    runs = [
        quip_quantize(w, h, orthogonal_transform(12, 1), orthogonal_transform(40, 0), SPEC)
        for _ in range(2)
    ]
    assert torch.equal(runs[0].codes, runs[1].codes)
    other = quip_quantize(w, h, orthogonal_transform(12, 3), orthogonal_transform(40, 2), SPEC)
    assert not torch.equal(runs[0].codes, other.codes)
