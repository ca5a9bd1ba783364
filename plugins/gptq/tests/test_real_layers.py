"""Error bounds on real stories260K layers, with inputs captured by forward hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from onecomp_gptq.gptq import GridSpec, dequantize, gptq_quantize, rtn_quantize

ASSETS = Path(__file__).resolve().parents[4] / "shared" / "assets"
LAYERS = ["model.layers.1.self_attn.q_proj", "model.layers.3.mlp.down_proj"]


@pytest.fixture(scope="module")
def captured() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name → (weight, inputs X (tokens, in)) from 16 windows of 128 calibration tokens."""
    model = AutoModelForCausalLM.from_pretrained(ASSETS / "stories260K", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(ASSETS / "stories260K")
    text = (ASSETS / "text" / "wikitext2-valid.tokens.txt").read_text()[:60000]
    ids = tok(text, return_tensors="pt").input_ids[0, : 16 * 128].view(16, 128)
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in LAYERS}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, args, out, n=n: inputs[n].append(args[0].reshape(-1, args[0].shape[-1]))
        )
        for n in LAYERS
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return {n: (model.get_submodule(n).weight.data, torch.cat(inputs[n])) for n in LAYERS}


def _rel_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (w - w_hat).t()).pow(2).sum() / (x @ w.t()).pow(2).sum())


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize(
    ("bits", "groupsize", "sym"), [(4, -1, True), (3, -1, False), (4, 32, True)]
)
def test_gptq_beats_rtn_on_the_same_grid(name, bits, groupsize, sym, captured) -> None:
    w, x = captured[name]
    h = 2 * x.t() @ x / x.shape[0]
    spec = GridSpec(bits=bits, sym=sym)
    gptq = _rel_error(w, dequantize(gptq_quantize(w, h, spec, groupsize, actorder=True)), x)
    rtn = _rel_error(w, dequantize(rtn_quantize(w, torch.diagonal(h), spec, groupsize)), x)
    assert gptq < 0.75 * rtn
    assert gptq < {4: 0.02, 3: 0.08}[bits]


def test_clipping_search_lowers_the_error_further(captured) -> None:
    w, x = captured["model.layers.3.mlp.down_proj"]
    h = 2 * x.t() @ x / x.shape[0]
    spec = GridSpec(bits=3, sym=False, clip_grid=100)
    plain = _rel_error(w, dequantize(gptq_quantize(w, h, GridSpec(bits=3, sym=False))), x)
    shrinks = [0.0, 1.0, 0.9, 0.8, 0.7, 0.6]
    searched = _rel_error(w, dequantize(gptq_quantize(w, h, spec, row_shrinks=shrinks)), x)
    assert searched < 0.95 * plain
