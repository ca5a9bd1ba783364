"""Block-wise fine-tuning of the DBF scale vectors (signs fixed).

After a block's layers are factorized, the three vectors a, c, b of every
DBF layer in it are optimised with Adam so that the block's output on the
quantized-stream inputs matches the full-precision block's output. This is
the largest single quality gain of DBF (spec: "Beyond per-layer fitting").
The vectors are trained as multiplicative corrections (init 1), so one
learning rate fits layers of any scale.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .factorization import compose, gauge_for_fp16, small_problem_threads
from .packing import pack_signs

if TYPE_CHECKING:
    from onecomp_core.blockwise import BlockContext

    from .quantizer import DBFResult

logger = logging.getLogger(__name__)

#: calibration tokens per Adam step (whole batches are accumulated up to this)
TOKENS_PER_STEP = 2048


class TrainableDBF(nn.Module):
    """A DBF layer whose vectors are a0·θa, c0·θc, b0·θb with trainable θ (fp32).

    With ``train_signs`` the sign matrices get real latents (init ±1) trained
    through a straight-through estimator: the forward uses sign(latent).
    """

    def __init__(
        self,
        result: DBFResult,
        bias: torch.Tensor | None,
        device: torch.device,
        train_signs: bool = False,
    ):
        super().__init__()
        s_a, s_b = result.signs()
        s_a_t, s_b_t = s_a.t().contiguous().to(device), s_b.t().contiguous().to(device)
        if train_signs:
            self.sign_a_t = nn.Parameter(s_a_t)
            self.sign_b_t = nn.Parameter(s_b_t)
        else:
            self.register_buffer("sign_a_t", s_a_t)
            self.register_buffer("sign_b_t", s_b_t)
        self.register_buffer("a0", result.dbf_Da.float().to(device))
        self.register_buffer("c0", result.dbf_mid.float().to(device))
        self.register_buffer("b0", result.dbf_Db.float().to(device))
        self.bias = None if bias is None else bias.detach().float()
        self.theta_a = nn.Parameter(torch.ones_like(self.a0))
        self.theta_c = nn.Parameter(torch.ones_like(self.c0))
        self.theta_b = nn.Parameter(torch.ones_like(self.b0))

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.a0 * self.theta_a, self.c0 * self.theta_c, self.b0 * self.theta_b

    def signs_t(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_Aᵀ, S_Bᵀ) as ±1; straight-through gradients when the latents train."""
        return _ste_sign(self.sign_a_t), _ste_sign(self.sign_b_t)

    def weight_t(self) -> torch.Tensor:
        """Ŵᵀ (m × n), differentiable in the vectors and (straight-through) the signs."""
        a, c, b = self.vectors()
        s_a_t, s_b_t = self.signs_t()
        return (s_b_t * b[:, None] * c[None, :]) @ (s_a_t * a[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one dense product: with T calibration tokens it costs T·n·m against T·k·(n+m)
        # (= 2× as much at 2 bits) for the factored path; Ŵ itself costs only n·k·m
        h = x.float() @ self.weight_t()
        if self.bias is not None:
            h = h + self.bias.to(h.device)
        return h.to(x.dtype)


def _ste_sign(latent: torch.Tensor) -> torch.Tensor:
    if not latent.requires_grad:
        return latent
    hard = torch.where(latent >= 0, 1.0, -1.0)
    return latent + (hard - latent).detach()


def finetune_block(
    context: BlockContext,
    steps: int,
    lr: float,
    seed: int,
    sign_lr: float = 0.0,
) -> dict[str, float]:
    """Fine-tune the DBF layers of ``context.block`` in place; returns loss before/after.

    Results are updated in place (so every dict that holds them agrees) and
    the layers' weights are replaced by the new dequantized weights. If the
    loss does not improve, nothing changes.
    """
    results = {
        name: r
        for name, r in context.results.items()
        if getattr(r, "is_dbf_quantized", False) and name in context.layers
    }
    if not results or not context.inputs:
        return {}
    parents = find_parents(context.block, {context.layers[n]: n for n in results})
    trainable = {
        name: TrainableDBF(
            r, getattr(context.layers[name], "bias", None), context.device, sign_lr > 0
        )
        for name, r in results.items()
    }
    frozen = [p for p in context.block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for name, (parent, attr) in parents.items():
        setattr(parent, attr, trainable[name])
    hidden = context.inputs[0].shape[-1]
    try:
        with small_problem_threads(context.inputs[0].numel() * hidden):
            before, after = _train(context, trainable, steps, lr, seed, sign_lr)
    finally:
        for name, (parent, attr) in parents.items():
            setattr(parent, attr, context.layers[name])
        for p in frozen:
            p.requires_grad_(True)
    logger.info("%s: block fine-tuning loss %.4g → %.4g", context.name, before, after)
    if not (math.isfinite(after) and after < before):
        logger.warning(
            "%s: fine-tuning did not help (%.4g → %.4g); kept", context.name, before, after
        )
        return {"before": before, "after": before}
    for name, layer in trainable.items():
        write_back(results[name], context.layers[name], layer)
    return {"before": before, "after": after}


def find_parents(
    block: nn.Module, wanted: dict[nn.Module, str]
) -> dict[str, tuple[nn.Module, str]]:
    """Layer name → (parent module, attribute) for the layers inside ``block``."""
    found = {}
    for parent in block.modules():
        for attr, child in parent.named_children():
            if child in wanted:
                found[wanted[child]] = (parent, attr)
    return found


def _detached(value: Any) -> Any:
    """Plain (autograd-usable) copies of the tensors in a kwargs structure."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _loss(context: BlockContext, index: int) -> torch.Tensor:
    from onecomp_core.blockwise import first_output

    x = context.inputs[index].to(context.device)
    kwargs = _detached(context.kwargs[index])
    out = first_output(context.block(x, **kwargs)).float()
    target = context.fp_outputs[index].to(context.device).float()
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def _mean_loss(context: BlockContext, batches: list[int]) -> float:
    with torch.no_grad():
        return sum(_loss(context, i).item() for i in batches) / len(batches)


def adam_with_cosine(
    layers: dict[str, TrainableDBF], steps: int, lr: float, sign_lr: float
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam over the three vectors (and the sign latents when ``sign_lr`` > 0), cosine decay to 0."""
    vectors = [p for m in layers.values() for p in (m.theta_a, m.theta_c, m.theta_b)]
    groups = [{"params": vectors, "lr": lr}]
    if sign_lr > 0:
        latents = [p for m in layers.values() for p in (m.sign_a_t, m.sign_b_t)]
        groups.append({"params": latents, "lr": sign_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    return opt, sched


def _train(
    context: BlockContext,
    layers: dict[str, TrainableDBF],
    steps: int,
    lr: float,
    seed: int,
    sign_lr: float,
) -> tuple[float, float]:
    count = len(context.inputs)
    tokens = max(1, context.inputs[0].shape[:-1].numel())
    per_step = max(1, min(count, TOKENS_PER_STEP // tokens))
    gen = torch.Generator().manual_seed(seed + context.index)
    monitor = list(range(min(count, per_step * 2)))
    before = _mean_loss(context, monitor)
    opt, sched = adam_with_cosine(layers, steps, lr, sign_lr)
    order: list[int] = []
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            for _ in range(per_step):
                if not order:
                    order = torch.randperm(count, generator=gen).tolist()
                (_loss(context, order.pop()) / per_step).backward()
            opt.step()
            sched.step()
    return before, _mean_loss(context, monitor)


def write_back(result: DBFResult, linear: nn.Module, layer: TrainableDBF) -> None:
    """New fp16 vectors into the result (in place) and the dequantized weight into the Linear."""
    with torch.no_grad():
        a, c, b = (v.detach().float().cpu() for v in layer.vectors())
        s_a_t, s_b_t = (s.detach().cpu() for s in layer.signs_t())
        a, c, b = (v.to(torch.float16) for v in gauge_for_fp16(a, c, b))
        if not all(torch.isfinite(v).all() for v in (a, c, b)):
            logger.warning("fine-tuned vectors are not finite; the fitted ones are kept")
            return
        result.dbf_Da, result.dbf_mid, result.dbf_Db = a, c, b
        s_a, s_b = s_a_t.t().contiguous(), s_b_t.t().contiguous()
        result.dbf_A, result.dbf_B = pack_signs(s_a), pack_signs(s_b)
        result.finetuned = True
        weight = compose(a, s_a, c, s_b, b).to(torch.float16)
        linear.weight.data = weight.to(linear.weight.device, linear.weight.dtype)
