"""Rotating a model's residual stream before quantization (QuaRot/SpinQuant style, no training).

An orthogonal ``Q`` on the hidden width leaves a pre-norm transformer's
function unchanged when it is folded into the weights: RMSNorm is invariant
to rotations once its scale vector has been folded into the linears that read
it, so every block reads ``x·Q`` and writes ``y·Q``. The rotation spreads
outlier channels of weights and activations over all coordinates, which grid
quantizers (GPTQ, RTN, DBF, ...) handle badly; a model without outliers gains
little (README, "Rotation"). What this module does, in order, for a
Llama-style model:

1. fold each RMSNorm's scale into the linears after it (q/k/v, gate/up, the
   head) and set the scale to ones; untie the head from the embeddings (the
   head takes the final norm's scale, the embeddings do not);
2. rotate the residual stream: embeddings ``E·Q``, the input side of q/k/v,
   gate/up and the head ``W·Q``, the output side of o/down ``Qᵀ·W``;
3. rotate each attention head's values: ``v`` outputs and ``o`` inputs by a
   per-head orthogonal (offline, no cost at inference);
4. rotate the MLP's intermediate activations: ``down``'s input side ``W·Q₂``
   offline, and ``x·Q₂`` online, by a forward pre-hook on ``down`` (any width:
   stories260K's 172 is 4 × 43, see :mod:`onecomp_core.kernels.orthogonal`).

Only step 4 has a run-time cost; its spec (the layers, widths and seeds) is
saved in ``quantization_config["rotation"]`` and :func:`attach_online` puts the
pre-hooks back on load. All transforms are rebuilt from seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..kernels.orthogonal import OrthogonalTransform, orthogonal_transform

#: values of ``--rotate`` / ``Runner(rotation=...)`` ("learned": :mod:`.learned`)
ROTATIONS = ("hadamard", "learned")
#: architectures whose blocks are pre-RMSNorm with q/k/v/o and gate/up/down linears
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
#: the pre-hook handle kept on a module that has an online rotation
_HANDLE = "_onecomp_online_rotation"


def check_rotation(rotation: str | None, option: str = "--rotate") -> str | None:
    """``rotation`` when allowed (None or "none": no rotation); else one-line ValueError."""
    if rotation in (None, "none"):
        return None
    if rotation not in ROTATIONS:
        allowed = ", ".join((*ROTATIONS, "none"))
        raise ValueError(f"{option} {rotation!r}: expected one of {allowed}")
    return rotation


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be rotated (None: it can)."""
    return _type_reason(getattr(model.config, "model_type", None))


def _type_reason(kind: str | None) -> str | None:
    if kind not in SUPPORTED:
        return f"model type {kind!r} is not supported (supported: {', '.join(SUPPORTED)})"
    return None


def check_model_supported(model: str) -> None:
    """Before any long work: a local model folder whose type cannot be rotated → ValueError.

    (A hub id is checked once loaded.)
    """
    config = Path(model).expanduser() / "config.json"
    if not config.is_file():
        return
    try:
        kind = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # the loader names a damaged config
    reason = _type_reason(kind)
    if reason is not None:
        raise ValueError(f"--rotate: {reason}")


class Rotation:
    """The seeded transforms of one model and how each part of it takes them.

    State lives here (the drawn transforms); the whole-model path
    (:func:`rotate_model`) and the streamed one
    (:mod:`onecomp_core.transforms.streamed`) apply the same parts.
    """

    def __init__(self, config: Any, seed: int = 0) -> None:
        hidden = config.hidden_size
        head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
        self.seed = int(seed)
        self.residual = orthogonal_transform(hidden, self.seed)
        self.per_head = orthogonal_transform(head_dim, self.seed + 1)
        self.online_seed = self.seed + 2

    def block(self, block: nn.Module) -> dict[str, int]:
        """Fold the block's norms and rotate its linears in place; the online entry of its
        ``down_proj`` (width, seed) is returned (and its pre-hook attached)."""
        attn, mlp = block.self_attn, block.mlp
        with torch.no_grad():
            _fold_norm(block.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
            _fold_norm(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
            for linear in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                _rotate_input(linear, self.residual)
            _rotate_output(attn.v_proj, self.per_head)
            _rotate_input(attn.o_proj, self.per_head)
            _rotate_output(attn.o_proj, self.residual)
            width = mlp.down_proj.in_features
            _rotate_input(mlp.down_proj, orthogonal_transform(width, self.online_seed))
            _rotate_output(mlp.down_proj, self.residual)
        entry = {"width": width, "seed": self.online_seed}
        _attach(mlp.down_proj, entry)
        return entry

    def embedding(self, embed: nn.Module) -> None:
        """``E ← E·Q``: the residual stream starts rotated."""
        with torch.no_grad():
            _set(embed, self.residual.apply(_f64(embed.weight)))

    def head(self, head: nn.Module, norm_scale: torch.Tensor) -> None:
        """``W ← (W·diag(g))·Q``: the final norm's scale ``g`` folded, the stream un-rotated."""
        with torch.no_grad():
            _set(head, self.residual.apply(_f64(head.weight) * _f64(norm_scale)))

    def spec(self, online: dict[str, dict[str, int]]) -> dict[str, Any]:
        """What ``quantization_config["rotation"]`` records."""
        return {"kind": "hadamard", "seed": self.seed, "online": online}


def rotate_model(model: nn.Module, seed: int = 0) -> dict[str, Any]:
    """Fold a seeded rotation into ``model`` in place; returns the spec to save.

    The model computes the same function afterwards (up to rounding); the
    online pre-hooks on ``down_proj`` are attached here too.
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"--rotate: {reason}")
    rotation = Rotation(model.config, seed)
    body, head = model.model, model.get_output_embeddings()
    untie_head(model)
    prefix = _blocks_prefix(model)
    online = {
        f"{prefix}.{index}.mlp.down_proj": rotation.block(block)
        for index, block in enumerate(body.layers)
    }
    rotation.embedding(body.embed_tokens)
    rotation.head(head, body.norm.weight)
    body.norm.weight.data = torch.ones_like(body.norm.weight)
    return rotation.spec(online)


def attach_online(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    """Put the online rotations of ``spec`` (saved ``quantization_config["rotation"]``) on
    ``model``'s layers as forward pre-hooks; idempotent. A pre-hook, not a wrapper module,
    keeps the layers' names and saved tensor keys those of the unrotated model."""
    if not spec:
        return model
    for name, entry in spec.get("online", {}).items():
        _attach(model.get_submodule(name), entry)
    return model


def _attach(module: nn.Module, entry: dict[str, int]) -> None:
    old = getattr(module, _HANDLE, None)
    if old is not None:
        old.remove()
    transform = orthogonal_transform(int(entry["width"]), int(entry["seed"]))
    handle = module.register_forward_pre_hook(_OnlineRotation(transform))
    object.__setattr__(module, _HANDLE, handle)


class _OnlineRotation:
    """Forward pre-hook: the layer's input times ``Q`` (factored; no dense width × width)."""

    def __init__(self, transform: OrthogonalTransform) -> None:
        self.transform = transform

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (self.transform.apply(args[0]), *args[1:])


# -- the folding, one weight at a time (float64, then back to the weight's dtype) ------------------
def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _set(module: nn.Module, weight: torch.Tensor, name: str = "weight") -> None:
    target = getattr(module, name)
    target.data = weight.to(target.dtype)


def _fold_norm(norm: nn.Module, linears: list[nn.Module]) -> None:
    scale = _f64(norm.weight)
    for linear in linears:
        _set(linear, _f64(linear.weight) * scale)
    norm.weight.data = torch.ones_like(norm.weight)


def _rotate_input(linear: nn.Module, q: OrthogonalTransform) -> None:
    """``W ← W·Q``: the layer now reads ``x·Q`` (transforms applied per head when narrower)."""
    _set(linear, _apply(q, _f64(linear.weight)))


def _rotate_output(linear: nn.Module, q: OrthogonalTransform) -> None:
    """``W ← Qᵀ·W`` (and ``b ← b·Q``): the layer now writes ``y·Q``."""
    _set(linear, _apply(q, _f64(linear.weight).T).T)
    if getattr(linear, "bias", None) is not None:
        _set(linear, _apply(q, _f64(linear.bias)), "bias")


def _apply(q: OrthogonalTransform, x: torch.Tensor) -> torch.Tensor:
    """``x·Q`` on the last dim; a last dim that is a multiple of Q's width is done per slice."""
    width = x.shape[-1]
    if width == q.width:
        return q.apply(x)
    return q.apply(x.reshape(*x.shape[:-1], width // q.width, q.width)).reshape(x.shape)


def untie_head(model: nn.Module) -> None:
    """Give the head its own weight (it takes the final norm's scale; the embeddings do not)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is embed.weight:
        weight = embed.weight.detach()
        head.weight = nn.Parameter(weight if weight.is_meta else weight.clone())
    model.config.tie_word_embeddings = False
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text is not None and text is not model.config:
        text.tie_word_embeddings = False


def _blocks_prefix(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is model.model.layers:
            return name
    raise ValueError("--rotate: the model's blocks were not found")
