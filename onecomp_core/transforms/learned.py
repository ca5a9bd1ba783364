"""A learned rotation (``--rotate learned``): SpinQuant-style transforms trained for the grid.

A random Hadamard spreads outliers, but a model without outliers (stories260K)
gains nothing from it: which basis rounds well depends on the weights. Here
the function-preserving transforms of :mod:`.rotation` become parameters and
are trained against the loss of the model whose linears are rounded to the
method's grid (:func:`.fake_quant.fake_quantize`, straight-through), then
folded into the weights like the fixed rotation:

- ``R1``: the residual-stream rotation, ``R0 · exp(A − Aᵀ)`` with ``R0`` the
  seeded randomized Hadamard of ``--rotate hadamard`` (the start) and ``A``
  trained (the exponential of a skew matrix is orthogonal: no projection);
- per block, positive scales (SmoothQuant/AWQ-style, in the rotated basis):
  the attention and MLP norms' weights ``n`` (the linears after them take
  ``1/n`` on their inputs), ``v``'s output rows against ``o``'s input columns
  (per KV head), and ``up``'s output rows against ``down``'s input columns;
- ``down``'s input keeps the seeded online rotation of ``--rotate hadamard``.

The objective is the KL divergence of the rounded model's next-token
distribution from the original's over the calibration windows. All of it is
folded offline: the saved model differs from a ``hadamard`` one only in its
weights and norm weights, and loads with the same online pre-hooks. Training
needs the whole model with gradients (about 3× its fp32 size plus the
activations of a few windows); :func:`too_large_reason` names the models a
run falls back to the streamed ``hadamard`` rotation for.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..kernels.orthogonal import orthogonal_transform
from .fake_quant import fake_quantize
from .rotation import _attach, _blocks_prefix, unsupported_reason, untie_head

#: training steps, windows per step, Adam's learning rate (README, "Rotation": the sweep)
STEPS, BATCH, LR = 100, 4, 1e-2
#: models whose weight files exceed this are rotated with the streamed ``hadamard`` instead
MAX_WEIGHT_BYTES = 2 * 1024**3
#: the grid trained for when the method has no ``wbits`` (binary/DBF family)
DEFAULT_BITS = 2


class LearnedTransforms(nn.Module):
    """The trained parameters of one model's rotation and scales (see the module docstring)."""

    def __init__(self, config: Any, seed: int = 0) -> None:
        super().__init__()
        hidden, layers = config.hidden_size, config.num_hidden_layers
        heads, kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // heads
        self.group = heads // kv  # query heads per KV head
        self.seed = int(seed)
        self.online_seed = self.seed + 2  # the same online rotation as --rotate hadamard
        r0 = orthogonal_transform(hidden, self.seed).matrix(torch.float32)
        self.register_buffer("r0", r0)
        self.generator = nn.Parameter(torch.zeros(hidden, hidden))
        self.log_attn = nn.Parameter(torch.zeros(layers, hidden))
        self.log_mlp = nn.Parameter(torch.zeros(layers, hidden))
        self.log_v = nn.Parameter(torch.zeros(layers, kv * self.head_dim))
        self.log_up = nn.Parameter(torch.zeros(layers, config.intermediate_size))
        online = orthogonal_transform(config.intermediate_size, self.online_seed)
        self.register_buffer("online", online.matrix(torch.float32))

    def r1(self) -> torch.Tensor:
        """The residual rotation: ``R0 · exp(A − Aᵀ)``."""
        return self.r0 @ torch.linalg.matrix_exp(self.generator - self.generator.T)


def folded_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights (and biases) the transforms act on, norm scales folded into the linears
    after them, by parameter name; float32 copies (the model is unchanged)."""
    prefix, out = _blocks_prefix(model), {}
    for index, block in enumerate(model.get_submodule(prefix)):
        at, mlp, p = block.self_attn, block.mlp, f"{prefix}.{index}."
        attn_scale = block.input_layernorm.weight.detach().float()
        mlp_scale = block.post_attention_layernorm.weight.detach().float()
        for name, linear, scale in (
            ("self_attn.q_proj", at.q_proj, attn_scale),
            ("self_attn.k_proj", at.k_proj, attn_scale),
            ("self_attn.v_proj", at.v_proj, attn_scale),
            ("self_attn.o_proj", at.o_proj, None),
            ("mlp.gate_proj", mlp.gate_proj, mlp_scale),
            ("mlp.up_proj", mlp.up_proj, mlp_scale),
            ("mlp.down_proj", mlp.down_proj, None),
        ):
            weight = linear.weight.detach().float()
            out[p + name + ".weight"] = weight if scale is None else weight * scale
            if getattr(linear, "bias", None) is not None:
                out[p + name + ".bias"] = linear.bias.detach().float()
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    out[_name(model, embed) + ".weight"] = embed.weight.detach().float()
    final = model.model.norm.weight.detach().float()
    out[_name(model, head) + ".weight"] = head.weight.detach().float() * final
    return out


def transformed(
    t: LearnedTransforms,
    base: dict[str, torch.Tensor],
    names: dict[str, str],
    bits: int | None = None,
    group: int | None = None,
) -> dict[str, torch.Tensor]:
    """Every transformed parameter by name; the block linears rounded when ``bits`` is given.

    ``names``: ``blocks``, ``embed``, ``head``, ``norm`` (module names in the model).
    """
    r1, out = t.r1(), {}

    def grid(w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, bits, group) if bits else w

    for index in range(t.log_attn.shape[0]):
        p = f"{names['blocks']}.{index}."
        attn, mlp = t.log_attn[index].exp(), t.log_mlp[index].exp()
        v_scale, up_scale = t.log_v[index].exp(), t.log_up[index].exp()
        out[p + "input_layernorm.weight"] = attn
        out[p + "post_attention_layernorm.weight"] = mlp
        for name in ("q_proj", "k_proj"):
            out[p + f"self_attn.{name}.weight"] = grid(
                base[p + f"self_attn.{name}.weight"] @ r1 / attn
            )
        v = base[p + "self_attn.v_proj.weight"] @ r1 / attn
        out[p + "self_attn.v_proj.weight"] = grid(v / v_scale[:, None])
        if p + "self_attn.v_proj.bias" in base:
            out[p + "self_attn.v_proj.bias"] = base[p + "self_attn.v_proj.bias"] / v_scale
        per_head = v_scale.reshape(-1, t.head_dim).repeat_interleave(t.group, 0).reshape(-1)
        out[p + "self_attn.o_proj.weight"] = grid(
            r1.T @ (base[p + "self_attn.o_proj.weight"] * per_head)
        )
        out[p + "mlp.gate_proj.weight"] = grid(base[p + "mlp.gate_proj.weight"] @ r1 / mlp)
        up = base[p + "mlp.up_proj.weight"] @ r1 / mlp
        out[p + "mlp.up_proj.weight"] = grid(up / up_scale[:, None])
        down = (base[p + "mlp.down_proj.weight"] * up_scale) @ t.online
        out[p + "mlp.down_proj.weight"] = grid(r1.T @ down)
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            if p + name + ".bias" in base:
                out[p + name + ".bias"] = base[p + name + ".bias"] @ r1
        if p + "mlp.up_proj.bias" in base:
            out[p + "mlp.up_proj.bias"] = base[p + "mlp.up_proj.bias"] / up_scale
    out[names["embed"] + ".weight"] = base[names["embed"] + ".weight"] @ r1
    out[names["head"] + ".weight"] = base[names["head"] + ".weight"] @ r1
    out[names["norm"] + ".weight"] = torch.ones_like(t.log_attn[0])
    return out


def learn(
    model: nn.Module,
    windows: torch.Tensor,
    bits: int,
    group: int | None = None,
    seed: int = 0,
    steps: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
) -> LearnedTransforms:
    """Train the transforms of ``model`` (unchanged) on ``windows`` (token ids, n × length);
    None: the module's ``STEPS``, ``BATCH``, ``LR``."""
    steps = STEPS if steps is None else steps
    batch, lr = batch or BATCH, lr or LR
    names = _names(model)
    base = folded_weights(model)
    device = next(model.parameters()).device
    windows = windows.to(device)
    with torch.no_grad():  # the original's next-token log-probabilities: the teacher
        teacher = torch.cat(
            [_logprobs(model(windows[i : i + batch]).logits) for i in range(0, len(windows), batch)]
        )
    student = _student(model, seed)
    t = LearnedTransforms(model.config, seed).to(device)
    opt = torch.optim.Adam(t.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    draw = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(0, len(windows), (min(batch, len(windows)),), generator=draw)
        params = transformed(t, base, names, bits, group)
        logits = functional_call(student, params, (windows[pick],)).logits
        loss = _kl(_logprobs(logits), teacher[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return t.requires_grad_(False)


def rotate_model_learned(
    model: nn.Module,
    windows: torch.Tensor,
    bits: int,
    group: int | None = None,
    seed: int = 0,
    steps: int | None = None,
) -> dict[str, Any]:
    """Learn the transforms, fold them into ``model`` in place; returns the spec to save."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"--rotate: {reason}")
    steps = STEPS if steps is None else steps
    start = time.perf_counter()
    t = learn(model, windows, bits, group, seed, steps)
    names = _names(model)
    with torch.no_grad():
        params = transformed(t, folded_weights(model), names)
    untie_head(model)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in params.items():
            own[name].data = value.to(own[name].dtype)
    online = {}
    for index, block in enumerate(model.get_submodule(names["blocks"])):
        entry = {"width": block.mlp.down_proj.in_features, "seed": t.online_seed}
        _attach(block.mlp.down_proj, entry)
        online[f"{names['blocks']}.{index}.mlp.down_proj"] = entry
    return {
        "kind": "learned",
        "seed": t.seed,
        "online": online,
        "trained_for": {"bits": bits, "group": group, "steps": steps},
        "seconds": round(time.perf_counter() - start, 1),
    }


def target_grid(method: Any) -> tuple[int, int | None]:
    """The grid the rotation is trained for: the method's ``wbits``/``groupsize`` if it has them."""
    bits = getattr(method, "wbits", None)
    group = getattr(method, "groupsize", None)
    return (int(bits) if isinstance(bits, int) else DEFAULT_BITS), group


def too_large_reason(folder: str | Path) -> str | None:
    """Why a local model is too large to learn its rotation on (None: it is not)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        return None
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    size = size or sum(f.stat().st_size for f in path.glob("*.bin"))
    if size > MAX_WEIGHT_BYTES:
        gb = size / 1024**3
        return (
            f"its weights ({gb:.1f} GB) exceed the {MAX_WEIGHT_BYTES / 1024**3:.0f} GB it trains on"
        )
    return None


def _student(model: nn.Module, seed: int) -> nn.Module:
    """A frozen copy with an untied head and the online rotation on every ``down_proj``."""
    student = copy.deepcopy(model)
    untie_head(student)
    for block in student.get_submodule(_blocks_prefix(student)):
        entry = {"width": block.mlp.down_proj.in_features, "seed": seed + 2}
        _attach(block.mlp.down_proj, entry)
    return student.requires_grad_(False)


def _logprobs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1)


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(teacher ‖ student)."""
    tokens = math.prod(student.shape[:-1])
    return nn.functional.kl_div(student, teacher, log_target=True, reduction="sum") / tokens


def _names(model: nn.Module) -> dict[str, str]:
    return {
        "blocks": _blocks_prefix(model),
        "embed": _name(model, model.get_input_embeddings()),
        "head": _name(model, model.get_output_embeddings()),
        "norm": _name(model, model.model.norm),
    }


def _name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)
