"""The blocked, lazy GPTQ equals a plain one-column-at-a-time GPTQ written here from the paper."""

from __future__ import annotations

import pytest
import torch
from onecomp_core.kernels import fit_grid

from onecomp_gptq.gptq import GridSpec, dequantize, gptq_quantize, rtn_quantize


def _problem(out_f: int = 12, n: int = 72, tokens: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, n, generator=g) * torch.exp(0.5 * torch.randn(1, n, generator=g))
    x = torch.randn(tokens, n, generator=g) * torch.exp(torch.randn(1, n, generator=g))
    return w, x, 2 * x.t() @ x / tokens


def plain_gptq(w, h, spec: GridSpec, gs: int, actorder: bool, static: bool, percdamp=0.01):
    """Textbook GPTQ: after each column, update every later column at once; no blocks, no laziness."""
    w, h = w.clone().double(), h.clone().double()
    n = w.shape[1]
    gs = n if gs == -1 else gs
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    diag = torch.diagonal(h).clone()
    if static:
        groups = [
            spec.fit(w[:, s : s + gs].float(), diag[s : s + gs].float()) for s in range(0, n, gs)
        ]
    perm = torch.argsort(diag.float(), descending=True) if actorder else torch.arange(n)
    w, h = w[:, perm], h[perm][:, perm]
    h += percdamp * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.zeros_like(w)
    maxq = (1 << spec.bits) - 1
    for j in range(n):
        if static:
            scale, zero = groups[int(perm[j]) // gs]
        elif j % gs == 0:
            scale, zero = spec.fit(w[:, j : j + gs].float(), diag[perm][j : j + gs].float())
        scale, zero = scale.double(), zero.double()
        codes = torch.clamp(torch.round(w[:, j] / scale) + zero, 0, maxq)
        q[:, j] = scale * (codes - zero)
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j + 1 :] -= err[:, None] * u[j, j + 1 :][None, :]
    return q[:, torch.argsort(perm)].float()


CASES = {
    "per-channel": dict(gs=-1, actorder=False, static=False),
    "groups straddle blocks": dict(gs=20, actorder=False, static=False),
    "act-order groups": dict(gs=16, actorder=True, static=False),
    "static groups + act-order": dict(gs=32, actorder=True, static=True),
    "per-channel act-order": dict(gs=-1, actorder=True, static=False),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sym", [True, False])
def test_blocked_lazy_equals_plain_reference(case: str, sym: bool) -> None:
    w, _, h = _problem()
    spec = GridSpec(bits=3, sym=sym)
    c = CASES[case]
    out = gptq_quantize(
        w,
        h,
        spec,
        groupsize=c["gs"],
        actorder=c["actorder"],
        blocksize=16,
        static_groups=c["static"],
    )
    ref = plain_gptq(w, h, spec, c["gs"], c["actorder"], c["static"])
    got = dequantize(out)
    assert (got - ref).abs().max() < 1e-5
    assert out.codes.dtype == torch.uint8 and out.fallback is None


def test_with_clipping_search_equals_plain_reference() -> None:
    w, _, h = _problem(seed=3)
    spec = GridSpec(bits=4, sym=False, clip_grid=50)
    out = gptq_quantize(w, h, spec, groupsize=24, actorder=True, blocksize=16)
    ref = plain_gptq(w, h, spec, 24, True, False)
    assert (dequantize(out) - ref).abs().max() < 1e-5


@pytest.mark.parametrize(("bits", "factor"), [(2, 0.8), (3, 0.7), (4, 0.7)])
def test_beats_round_to_nearest_on_output_error(bits: int, factor: float) -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(32, 64, generator=g)
    # correlated inputs (a few shared factors), as in real activations: where GPTQ pays off
    x = torch.randn(512, 64, generator=g) + torch.randn(512, 4, generator=g) @ torch.randn(
        4, 64, generator=g
    )
    h = 2 * x.t() @ x / x.shape[0]
    spec = GridSpec(bits=bits)
    gptq = dequantize(gptq_quantize(w, h, spec, groupsize=32))
    rtn = dequantize(rtn_quantize(w, torch.diagonal(h), spec, 32))
    err = lambda wq: (x @ (w - wq).t()).pow(2).sum()  # noqa: E731
    assert err(gptq) < factor * err(rtn)


def test_group_size_not_dividing_inputs_gives_short_last_group() -> None:
    w, _, h = _problem(n=172 // 2)  # 86 = 2·32 + 22
    out = gptq_quantize(w, h, GridSpec(bits=4), groupsize=32)
    assert out.scales.shape == (w.shape[0], 3)
    assert torch.bincount(out.g_idx.long()).tolist() == [32, 32, 22]


def test_act_order_g_idx_follows_processing_order() -> None:
    w, _, h = _problem(n=64)
    out = gptq_quantize(w, h, GridSpec(bits=4), groupsize=16, actorder=True)
    order = torch.argsort(torch.diagonal(h), descending=True)
    assert out.g_idx[order].tolist() == [j // 16 for j in range(64)]
    static = gptq_quantize(w, h, GridSpec(bits=4), groupsize=16, actorder=True, static_groups=True)
    assert static.g_idx.tolist() == [j // 16 for j in range(64)]


def test_dead_inputs_get_zero_weight() -> None:
    w, x, _ = _problem(n=32)
    x[:, [3, 17]] = 0
    h = 2 * x.t() @ x / x.shape[0]
    out = gptq_quantize(w, h, GridSpec(bits=4, sym=False), groupsize=-1)
    assert out.fallback is None
    assert torch.all(dequantize(out)[:, [3, 17]] == 0)


def test_non_positive_definite_hessian_falls_back_to_rtn_and_says_so() -> None:
    w, _, _ = _problem(n=16)
    h = -torch.eye(16)
    h[0, 0] = 1.0
    out = gptq_quantize(w, h, GridSpec(bits=4), groupsize=8)
    assert out.fallback and "rounded to nearest" in out.fallback
    assert torch.equal(out.codes, rtn_quantize(w, torch.diagonal(h), GridSpec(bits=4), 8).codes)
    nan_h = torch.full((16, 16), float("nan"))
    assert gptq_quantize(w, nan_h, GridSpec(bits=4)).fallback


def test_damping_grows_until_cholesky_succeeds() -> None:
    w, _, _ = _problem(n=8)
    h = torch.ones(8, 8)  # rank one: fails with tiny damping
    out = gptq_quantize(w, h, GridSpec(bits=4), percdamp=1e-9)
    assert out.fallback is None and out.damping is not None and out.damping > 1e-9


def test_scales_are_fp16_values_used_in_the_loop() -> None:
    w, _, h = _problem()
    out = gptq_quantize(w, h, GridSpec(bits=4), groupsize=24)
    assert out.scales.dtype == torch.float16
    ref = plain_gptq(w, h, GridSpec(bits=4), 24, False, False)
    assert torch.equal(dequantize(out), ref.float()) or (dequantize(out) - ref).abs().max() < 1e-5


def test_symmetric_grid_on_all_positive_row_keeps_the_range() -> None:
    row = torch.linspace(0.1, 1.0, 16).unsqueeze(0)
    scale, zero = fit_grid(row, 4, sym=True)
    assert zero.item() == 8 and scale.item() == pytest.approx(2 * 1.0 / 15, rel=1e-3)


@pytest.mark.parametrize("actorder", [False, True])
def test_row_search_keeps_per_row_best_output_error(actorder: bool) -> None:
    """Rows are picked by the error GPTQ accumulates (‖e‖² − λ‖δ‖²); checked against δHδᵀ here."""
    w, _, h = _problem(out_f=16, n=48, seed=7)
    spec = GridSpec(bits=3, sym=False)
    factors = [1.0, 0.9, 0.8, 0.7]
    kw = {"groupsize": 16, "actorder": actorder}

    def row_errors(out):
        delta = w - dequantize(out)
        return ((delta @ h) * delta).sum(dim=1)

    singles = torch.stack(
        [row_errors(gptq_quantize(w, h, spec, row_shrinks=[f], **kw)) for f in factors]
    )
    searched = row_errors(gptq_quantize(w, h, spec, row_shrinks=factors, **kw))
    assert torch.allclose(searched, singles.min(dim=0).values, rtol=1e-4)
    assert searched.sum() < singles[0].sum()  # the search beats the plain min-max range


def test_row_slices_bound_memory_without_changing_the_result(monkeypatch) -> None:
    """Large layers run the stacked candidates in slices of rows; rows are independent."""
    import onecomp_core.kernels.gptq_solve as gptq_module

    w, _, h = _problem(out_f=20, n=48, seed=3)
    spec = GridSpec(bits=3, sym=False, clip_grid=20)
    kw = {"groupsize": 16, "actorder": True, "row_shrinks": [0.0, 1.0, 0.8]}
    whole = gptq_quantize(w, h, spec, **kw)
    monkeypatch.setattr(gptq_module, "_STACK_ELEMENTS", 3 * 48 * 7)  # 7 rows per slice
    sliced = gptq_quantize(w, h, spec, **kw)
    assert torch.equal(sliced.codes, whole.codes)
    assert torch.equal(sliced.scales, whole.scales)
    assert torch.equal(sliced.zeros, whole.zeros)
