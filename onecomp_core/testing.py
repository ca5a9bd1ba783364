"""Helpers for tests of onecomp and of third-party plugins.

``registered_plugin`` puts a plugin object into the registry for the
duration of a ``with`` block; ``tiny_model`` builds small random models of the
architectures onecomp supports, from configs in code (no download).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from . import plugins


@contextmanager
def registered_plugin(plugin: object, name: str | None = None) -> Iterator[str]:
    plugin_name = plugins.register(plugin, name=name)
    try:
        yield plugin_name
    finally:
        plugins.unregister(plugin_name)


_TINY = dict(
    hidden_size=32,
    intermediate_size=72,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=128,
)


def tiny_model(kind: str = "llama", seed: int = 0, vocab_size: int = 128) -> torch.nn.Module:
    """A small randomly initialised model: "llama", "qwen2", "qwen3", "gpt2" or "bert"."""
    import transformers as tf

    torch.manual_seed(seed)
    sizes = {**_TINY, "vocab_size": vocab_size}
    if kind == "llama":
        config = tf.LlamaConfig(**sizes)
    elif kind == "qwen2":
        config = tf.Qwen2Config(**sizes)
    elif kind == "qwen3":
        config = tf.Qwen3Config(**sizes, head_dim=8)
    elif kind == "gpt2":
        config = tf.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, vocab_size=vocab_size, n_positions=128
        )
    elif kind == "bert":
        config = tf.BertConfig(
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=vocab_size,
            max_position_embeddings=128,
        )
        return tf.BertModel(config).eval()
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}")
    return tf.AutoModelForCausalLM.from_config(config).eval()
