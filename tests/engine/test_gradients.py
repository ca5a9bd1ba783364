"""Input and output-gradient second moments, from one pass over the original model."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.engine.gradients import collect_moments, limit_batches
from onecomp_core.engine.statistics import StatisticsCollector


@pytest.fixture(scope="module")
def model_and_batches(stories_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 512, (4, 24), generator=gen)
    return model, [(ids[:2], None), (ids[2:], torch.ones(2, 24, dtype=torch.long))]


def test_input_moments_match_the_runner_statistics(model_and_batches):
    model, batches = model_and_batches
    layers = {
        n: m
        for n, m in model.named_modules()
        if n.startswith("model.layers.1.mlp.") and isinstance(m, torch.nn.Linear)
    }
    moments = collect_moments(model, layers, batches, gradients=True, full=True)
    collector = StatisticsCollector(layers, "full", torch.float64)
    with torch.no_grad(), collector.hooked():
        for ids, _ in batches:
            collector.new_batch(None)
            model(input_ids=ids)
    for name, h in collector.hessians().items():
        torch.testing.assert_close(moments[name].xtx, h / 2)
        torch.testing.assert_close(moments[name].a, h.diagonal() / 2)
        assert moments[name].tokens == 4 * 24
        b = moments[name].b
        assert b is not None and b.shape == (layers[name].out_features,)
        assert torch.isfinite(b).all() and (b > 0).all()


def test_gradient_moments_equal_autograd(model_and_batches):
    model, batches = model_and_batches
    name = "model.layers.0.self_attn.o_proj"
    layer = model.get_submodule(name)
    moments = collect_moments(
        model, {name: layer}, batches[:1], gradients=True, fisher_labels="data"
    )
    ids = batches[0][0]
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
    try:
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        (grad,) = torch.autograd.grad(loss, captured["y"])
    finally:
        handle.remove()
    expected = grad.double().reshape(-1, grad.shape[-1]).pow(2).mean(0)
    torch.testing.assert_close(moments[name].b, expected)


def test_true_fisher_moments_use_labels_drawn_from_the_model(model_and_batches):
    """fisher_labels="model": b and GᵀG/N are the gradients of the NLL of labels the model itself
    draws (seeded), over every position; they differ from the text's labels ("data")."""
    model, batches = model_and_batches
    name = "model.layers.1.self_attn.o_proj"
    layer = model.get_submodule(name)
    moments = collect_moments(model, {name: layer}, batches[:1], full=True, samples=2, seed=3)
    ids = batches[0][0]
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
    try:
        logits = model(input_ids=ids).logits.float().reshape(-1, 512)
    finally:
        handle.remove()
    generator = torch.Generator().manual_seed(3)
    grads = []
    for _ in range(2):
        labels = torch.multinomial(logits.detach().softmax(-1), 1, generator=generator)
        loss = torch.nn.functional.cross_entropy(logits, labels.reshape(-1), reduction="sum")
        (grad,) = torch.autograd.grad(loss, captured["y"], retain_graph=True)
        grads.append(grad.double().reshape(-1, grad.shape[-1]))
    g = torch.cat(grads)
    torch.testing.assert_close(moments[name].b, g.pow(2).mean(0))
    torch.testing.assert_close(moments[name].gtg, g.t() @ g / g.shape[0])
    empirical = collect_moments(model, {name: layer}, batches[:1], fisher_labels="data")
    assert not torch.allclose(empirical[name].b, moments[name].b, rtol=0.1)
    with pytest.raises(ValueError, match="fisher_labels='fake'"):
        collect_moments(model, {name: layer}, batches[:1], fisher_labels="fake")


def test_the_model_is_left_as_it_was(model_and_batches):
    model, batches = model_and_batches
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = {"model.layers.0.mlp.up_proj": model.get_submodule("model.layers.0.mlp.up_proj")}
    collect_moments(model, layers, batches, gradients=True)
    for n, p in model.named_parameters():
        assert p.requires_grad and p.grad is None
        assert torch.equal(p, before[n])


def test_limit_batches_caps_samples_and_length():
    batches = [(torch.zeros(3, 10, dtype=torch.long), None)] * 3
    limited = limit_batches(batches, max_samples=4, seqlen=6)
    assert [b[0].shape for b in limited] == [(3, 6), (1, 6)]
