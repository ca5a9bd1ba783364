"""Streamed perplexity (block by block) equals the whole-model forward's."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from onecomp_core.contract import LayerJob
from onecomp_core.data.model import ModelConfig
from onecomp_core.engine.blocks import find_blocks
from onecomp_core.evaluation import calculate_perplexity
from onecomp_core.evaluation.scoring import token_logprobs
from onecomp_core.rtn import RTN
from onecomp_core.storage import (
    apply_results,
    build_artifact,
    load_quantized_model,
    save_quantized_model,
)
from onecomp_core.testing import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def whole_model_nll(model: nn.Module, ids: torch.Tensor, seqlen: int) -> tuple[float, int]:
    """The protocol computed the old way: every window through ``model(...)`` whole."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel(), seqlen):
            window = ids[start : start + seqlen][None]
            if window.shape[1] < 2:
                continue
            logprobs = token_logprobs(model, window)
            total -= logprobs.double().sum().item()
            count += logprobs.numel()
    return total / count, count


class Ids:
    """A tokenizer stand-in for models without one: the text is a list of token ids."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __call__(self, _text: str, **_kw: Any):
        return type("Encoded", (), {"input_ids": torch.tensor([self.ids])})()


def block_order(model: nn.Module) -> tuple[list[int], list]:
    order: list[int] = []
    _, blocks = find_blocks(model)
    handles = [
        b.register_forward_hook(lambda _m, _a, _o, i=i: order.append(i))
        for i, b in enumerate(blocks)
    ]
    return order, handles


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gpt2"])
def test_tiny_models_equal_the_whole_model(kind: str) -> None:
    model = tiny_model(kind, seed=1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (203,), generator=gen)
    want, count = whole_model_nll(model, ids, 32)
    order, handles = block_order(model)
    result = calculate_perplexity(model, Ids(ids.tolist()), "x", seqlen=32, batch_size=3)
    for h in handles:
        h.remove()
    assert result.tokens == count
    assert result.nll == pytest.approx(want, rel=1e-6)
    # streamed: every batch of windows through block 0 before any reaches block 1 (the
    # model's end calls the blocks' pass-throughs after that)
    batches = math.ceil(6 / 3) + 1
    assert order[: 2 * batches] == [0] * batches + [1] * batches


@pytest.fixture(scope="module")
def stories(stories_path: Path):
    config = ModelConfig(path=stories_path, dtype="float32")
    return config.load_model(), config.load_tokenizer()


def test_stories_full_precision_equals_the_whole_model(assets: Path, stories) -> None:
    model, tokenizer = stories
    path = assets / "text" / "tinystories-valid-excerpt.txt"
    ids = tokenizer(path.read_text(), return_tensors="pt").input_ids[0][:4096]
    want, count = whole_model_nll(model, ids, 256)
    result = calculate_perplexity(model, tokenizer, path, seqlen=256, max_tokens=4096)
    assert result.tokens == count
    assert result.nll == pytest.approx(want, rel=1e-6)


def test_stories_saved_quantized_folder_equals_the_whole_model(
    assets: Path, stories, tmp_path: Path
) -> None:
    model, tokenizer = stories
    model = ModelConfig(path=assets / "stories260K", dtype="float32").load_model()
    method = RTN(wbits=4)
    results = {
        name: method.quantize(LayerJob(name, module))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    apply_results(model, results)
    extra = {"calibration_hash": "c0ffee", "qep": None}
    out = save_quantized_model(
        build_artifact(model, method, results, tokenizer, extra), tmp_path / "q"
    )
    loaded, _ = load_quantized_model(out)
    path = assets / "text" / "tinystories-valid-excerpt.txt"
    ids = tokenizer(path.read_text(), return_tensors="pt").input_ids[0][:3000]
    want, count = whole_model_nll(loaded, ids, 256)
    result = calculate_perplexity(loaded, tokenizer, path, seqlen=256, max_tokens=3000)
    assert result.tokens == count
    assert result.nll == pytest.approx(want, rel=1e-6)
    assert result.ppl > calculate_perplexity(model, tokenizer, path, 256, 3000).ppl * 0.99
