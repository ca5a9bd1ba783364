"""The model's end applied to the last block's outputs equals the model's own forward."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.engine import blocks as blockwise
from onecomp_core.engine.tail import run_end
from onecomp_core.testing import tiny_model


def _batches(seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, 128, (2, 12), generator=gen) for _ in range(2)]
    masks = [None, torch.ones(2, 12, dtype=torch.long)]
    masks[1][0, :3] = 0  # left padding in one batch
    return list(zip(ids, masks, strict=True))


def _finals(model, batches):
    _, blocks = blockwise.find_blocks(model)
    inputs, kwargs = blockwise.capture_inputs(model, blocks[0], batches, torch.device("cpu"))
    outs = []
    for x, kw in zip(inputs, kwargs, strict=True):
        for block in blocks:
            x = blockwise.run_block(block, x, kw)
        outs.append(x)
    return blocks, outs


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gpt2"])
def test_logits_match_the_whole_model(kind):
    model = tiny_model(kind)
    batches = _batches()
    blocks, finals = _finals(model, batches)
    with torch.no_grad():
        got = list(run_end(model, blocks, finals, batches, torch.device("cpu")))
        for out, (ids, mask) in zip(got, batches, strict=True):
            want = model(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    assert "forward" not in blocks[0].__dict__  # the pass-through is undone


def test_head_input_is_what_the_head_reads():
    model = tiny_model("llama")
    batches = _batches(1)
    blocks, finals = _finals(model, batches)
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
        handle.remove()
        got = list(run_end(model, blocks, finals, batches, torch.device("cpu"), want="head_input"))
    for a, b in zip(got, seen, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_blocks_on_meta_are_not_needed():
    """The walk may have released the blocks: their weights are never read."""
    model = tiny_model("llama")
    batches = _batches(2)
    blocks, finals = _finals(model, batches)
    with torch.no_grad():
        want = [model(input_ids=i, attention_mask=m).logits for i, m in batches]
        blocks.to("meta")
        got = list(run_end(model, blocks, finals, batches, torch.device("cpu")))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
