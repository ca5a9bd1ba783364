"""Helpers for tests of onecomp and of third-party plugins.

``registered_plugin`` puts a plugin object into the registry for the
duration of a ``with`` block; ``tiny_model`` builds small random models of the
architectures onecomp supports, from configs in code (no download);
``HessianRTN`` (with ``HessianRTNPlugin``) is a toy method that needs the full
input statistics and sequential sub-groups, for tests of the engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from . import registry
from .contract import LayerJob, Needs, Register, hookimpl
from .kernels import dequantize_codes, grid_params, quantize_codes
from .rtn import RTN, RTNResult


@contextmanager
def registered_plugin(plugin: object, name: str | None = None) -> Iterator[str]:
    """``plugin`` (an object with an ``onecomp_register`` hookimpl) registered inside the block."""
    plugin_name = registry.register(plugin, name=name)
    try:
        yield plugin_name
    finally:
        registry.unregister(plugin_name)


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


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's Linear layers by name, the head left out (what a method quantizes)."""
    return {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"
    }


def quantize_layers(method: Any, layers: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Each layer quantized without statistics and its dequantized weight written back, as
    the engine writes it back: the results by name (for tests of model-level steps)."""
    results = {}
    for name, module in layers.items():
        results[name] = method.quantize(LayerJob(name, module))
        module.weight.data = results[name].dequantize().float()
    return results


def saved_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved folder, whatever its sharding (one file or one per block)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


# -- a toy method that uses calibration statistics ----------------------------------------
@dataclass
class HessianRTN(RTN):
    """RTN that picks, per row, the clipping factor with the lowest output error ΔHΔᵀ.

    Its result depends on the calibration inputs, which is what tests of the
    engine's statistics and resume need; the core tests must not depend on plugins.
    It asks for the full H and for sequential sub-groups, like GPTQ.
    """

    method: ClassVar[str] = "hessian_rtn"

    def needs(self) -> Needs:
        return Needs(inputs="full", sequential=True)

    def quantize_layer(self, job: LayerJob) -> RTNResult:
        hessian = job.hessian
        assert hessian is not None and hessian.shape == (job.module.in_features,) * 2
        w = job.weight.float()
        best_err, best = None, None
        for clip in (1.0, 0.9, 0.8):
            scale, zero = grid_params(w * clip, self.wbits, self.sym)
            codes = quantize_codes(w, scale, zero, self.wbits)
            delta = w - dequantize_codes(codes, scale, zero)
            err = ((delta @ hessian) * delta).sum(dim=1)
            if best_err is None:
                best_err, best = err, (codes, scale, zero)
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best = tuple(
                    torch.where(better[:, None] if n.dim() == 2 else better, n, o)
                    for n, o in zip((codes, scale, zero), best, strict=True)
                )
        codes, scale, zero = best
        return RTNResult(
            codes=codes.to(torch.uint8),
            scales=scale[:, None].half(),
            zeros=zero[:, None].to(torch.uint8),
            bits=self.wbits,
            groupsize=-1,
            sym=self.sym,
        )


class HessianRTNPlugin:
    """Registers :class:`HessianRTN` (use with :func:`registered_plugin`)."""

    @hookimpl
    def onecomp_register(self, register: Register) -> None:
        register.add_method(HessianRTN)
