"""Distillation on text the full-precision model samples itself (``distill_data``)."""

from __future__ import annotations

import copy

import torch

from onecomp_core.contract import RunView
from onecomp_core.engine.model_walk import Walk
from onecomp_core.testing import linear_layers, quantize_layers, tiny_model
from onecomp_dbf import DBF
from onecomp_dbf.distill import Teacher, kl_loss
from onecomp_dbf.samples import (
    last_hidden,
    next_token_logits,
    sample_sequences,
    sample_with_cache,
)


def test_walk_gives_the_models_next_token_logits():
    """Sampling through the block walk draws from the model's own next-token distribution."""
    model = tiny_model("llama", seed=0)
    ids = [torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(1))]
    got = next_token_logits(Walk(model, "cpu"), ids)[0]
    with torch.no_grad():
        want = model(input_ids=ids[0]).logits[:, -1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_samples_are_seeded_start_at_bos_and_follow_the_model():
    model = tiny_model("llama", seed=0)
    walk = Walk(model, "cpu")
    state = torch.random.get_rng_state()
    for draw in (sample_sequences, sample_with_cache):
        where = walk if draw is sample_sequences else model
        one = draw(where, 5, 9, 3, seed=4, rows=2)
        assert [tuple(b[0].shape) for b in one] == [(2, 9), (2, 9), (1, 9)]
        assert all(b[1] is None and (b[0][:, 0] == 3).all() for b in one)
        again = draw(where, 5, 9, 3, seed=4, rows=2)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(one, again, strict=True))
        other = draw(where, 5, 9, 3, seed=5, rows=2)
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(one, other, strict=True))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    # streamed (walk, no cache) and in-memory (cache) runs distil on the same text
    walked = sample_sequences(walk, 5, 9, 3, seed=4, rows=2)
    cached = sample_with_cache(model, 5, 9, 3, seed=4, rows=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(walked, cached, strict=True))
    # the model's own text is likelier under the model than uniform random tokens (a random
    # tiny model is nearly uniform: a sharper head makes the difference measurable)
    model.get_output_embeddings().weight.data *= 30
    own = torch.cat([b[0] for b in sample_sequences(walk, 16, 12, 3, seed=0, rows=16)])
    noise = torch.randint(0, 128, own.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll = [model(input_ids=x, labels=x).loss.item() for x in (own, noise)]
    assert nll[0] < nll[1]


def test_prepare_samples_calibration_shaped_text_and_its_fp_teacher():
    fp = tiny_model("llama", seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 10), generator=gen), None) for _ in range(3)]
    walk = Walk(fp, "cpu")
    q = DBF(target_bits=1.0, iters=5, finetune_steps=0, distill_steps=5, distill_data="generated")
    assert DBF().distill_data == "calibration"  # the default (see the plugin README)
    q.prepare(RunView(model=fp, layers=linear_layers(fp), batches=batches, walk=walk))
    own, teacher = q._sampled
    assert [tuple(b[0].shape) for b in own] == [(2, 10)] * 3
    for got, want in zip(teacher.hidden, last_hidden(walk, own), strict=True):
        torch.testing.assert_close(got, want)
    plain = DBF(finetune_steps=0, distill_steps=5, distill_data="calibration")
    plain.prepare(RunView(model=fp, layers=linear_layers(fp), batches=batches, walk=walk))
    assert plain._sampled is None


def test_distillation_on_sampled_text_matches_the_model_on_its_own_text():
    """The hooks distil on the sampled text: the KL on the model's own text falls."""
    fp = tiny_model("llama", seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 128, (2, 16), generator=gen), None) for _ in range(4)]
    q = DBF(
        target_bits=1.0, iters=5, finetune_steps=0, distill_steps=30, distill_lr=2e-2,
        distill_data="generated",
    )  # fmt: skip
    q.prepare(RunView(model=fp, layers=linear_layers(fp), batches=batches, walk=Walk(fp, "cpu")))
    own = [b[0] for b in q._sampled[0]]
    with torch.no_grad():
        want = [fp(input_ids=x).logits for x in own]
    model = copy.deepcopy(fp)
    layers = linear_layers(model)
    results = quantize_layers(q, layers)
    walk = Walk(model, "cpu")
    fp_walk = Walk(fp, "cpu")
    q._teacher = Teacher(fp_walk.run(*fp_walk.start(batches)))  # what on_block_done keeps

    def kl() -> float:
        with torch.no_grad():
            return sum(
                kl_loss(model(input_ids=x).logits, w).item() for x, w in zip(own, want, strict=True)
            )

    before = kl()
    new = q.on_model_done(
        RunView(model=model, layers=layers, batches=batches, results=results, walk=walk)
    )
    assert set(new) == set(results) and all(r.finetuned for r in new.values())
    assert q._sampled is None  # released after use
    for name, result in new.items():
        layers[name].weight.data = result.dequantize().float()
    assert kl() < 0.8 * before
