"""One layer's ARB fit: the calibration-aware variants lower the output error."""

from __future__ import annotations

import pytest
import torch

from onecomp_arb.fit import fit_layer, output_error


def _layer(p=12, m=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(p, m, generator=gen) * torch.exp(0.5 * torch.randn(1, m, generator=gen))
    x = torch.randn(300, m, generator=gen) * torch.exp(torch.randn(1, m, generator=gen))
    x[:, 1] += x[:, 0]
    return w, (2 * x.t() @ x / 300).double()


def test_variants_order_by_output_error():
    w, h = _layer()
    err = {v: output_error(w, fit_layer(w, h, v).weight(), h) for v in ("arb", "x", "rc")}
    assert err["x"] < err["arb"] and err["rc"] < err["arb"]
    for variant in ("x", "rc"):
        no_feedback = fit_layer(w, h, variant, sign_rounds=0)
        assert err[variant] <= output_error(w, no_feedback.weight(), h)


@pytest.mark.parametrize("variant", ["arb", "x", "rc"])
def test_form_of_each_variant(variant):
    w, h = _layer(seed=1)
    fit = fit_layer(w, h, variant)
    assert (fit.mu is None) == (variant == "rc") and (fit.col is None) == (variant != "rc")
    assert set(fit.signs.unique().tolist()) <= {-1.0, 1.0}
    low, high = fit.levels()
    approx = fit.weight()
    assert torch.all((approx - low).abs().lt(1e-9) | (approx - high).abs().lt(1e-9))
