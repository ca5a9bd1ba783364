"""Second moments of layer inputs (a) and of the loss gradient at layer outputs (b).

One forward (and, for b, one backward) pass of the original model over the
Runner's calibration batches, streamed through the blocks (never the whole
model on one device, :class:`~onecomp_core.engine.model_walk.Walk`): per
batch, a forward block by block keeps only the block-boundary activations,
the loss is taken at the model's end, and the backward goes block by block,
recomputing each block from its saved input (activation checkpointing at
block granularity). Hooks add x_j² and g_i² into running sums, so no
activation is kept beyond one batch's block boundaries and one block's graph:

* a_j = mean over tokens of x_j² (the diagonal of XᵀX/N);
* b_i = mean over tokens of g_i², g = ∂(token NLL)/∂(layer output).

Together they give the diagonal Kronecker-factored Fisher estimate of the
loss increase of a weight change Δ: Σ_ij b_i·a_j·Δ_ij². With ``full`` the
whole factors XᵀX/N and GᵀG/N are kept too (K-FAC: tr(B·Δ·A·Δᵀ)).

Which labels the NLL uses (``fisher_labels``):

* "model" (default): labels drawn from the model's own next-token
  distribution, ``samples`` draws per token. E[g·gᵀ] is then the true Fisher,
  the curvature of KL(p_original ‖ p_quantized), i.e. of how much the output
  distribution moves, whatever text is evaluated later. It does not depend
  on how well the model predicts the calibration text.
* "data": the calibration text's next tokens. On text the model
  predicts badly (e.g. a TinyStories model on WikiText) the large gradients
  of tokens it cannot predict anyway dominate (Kunstner et al., 2019,
  "Limitations of the empirical Fisher approximation").

``scope="block"`` is the block-local alternative: no loss at the head and no
backward across blocks; each block's output gets a random probe v ~ N(0, I/σ²)
(σ² the mean square of the block's output), so b is the Gauss–Newton diagonal
of the block's relative output error ‖Δy‖²/‖y‖², the objective DBF's block
fine-tuning minimises. It needs one block forward and backward per batch and
no model end; it ignores how much each block matters to the loss.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..contract.needs import GRADIENT_LABELS as FISHER_LABELS
from ..contract.needs import GRADIENT_SCOPES, GradientMoments
from ..contract.views import LayerMoments, ModelWalk
from . import blocks as blockwise
from .model_walk import Walk, open_walk

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor | None]


class _Accumulator:
    def __init__(self, module: nn.Module, gradients: bool, full: bool = False) -> None:
        self.sum_x = torch.zeros(module.in_features, dtype=torch.float64)
        n = module.in_features
        self.sum_xx = torch.zeros(n, n, dtype=torch.float64) if full else None
        m = module.out_features
        self.sum_g = torch.zeros(m, dtype=torch.float64) if gradients else None
        self.sum_gg = torch.zeros(m, m, dtype=torch.float64) if gradients and full else None
        self.tokens = 0
        self.grad_tokens = 0
        self.mask: torch.Tensor | None = None
        self.active = True  # off while a forward only computes block boundaries

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().reshape(-1, t.shape[-1])
        if self.mask is not None:
            t = t[self.mask.to(t.device)]
        return t.double()

    def forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self.active:
            return
        x = self._rows(args[0])
        self.sum_x += x.pow(2).sum(0).cpu()
        if self.sum_xx is not None:
            self.sum_xx += (x.t() @ x).cpu()
        self.tokens += x.shape[0]
        if self.sum_g is not None and output.requires_grad:
            output.register_hook(self._grad_hook)

    def _grad_hook(self, grad: torch.Tensor) -> None:
        g = self._rows(grad)
        self.sum_g += g.pow(2).sum(0).cpu()
        if self.sum_gg is not None:
            self.sum_gg += (g.t() @ g).cpu()
        self.grad_tokens += g.shape[0]

    def moments(self) -> LayerMoments:
        if self.tokens == 0:
            raise RuntimeError("no calibration token reached this layer")
        b = gtg = None
        if self.sum_g is not None and self.grad_tokens:
            b = self.sum_g / self.grad_tokens
            if self.sum_gg is not None:
                gtg = self.sum_gg / self.grad_tokens
        xtx = None if self.sum_xx is None else self.sum_xx / self.tokens
        return LayerMoments(self.sum_x / self.tokens, b, self.tokens, xtx, gtg)


def limit_batches(batches: list[Batch], max_samples: int | None, seqlen: int | None) -> list[Batch]:
    """At most ``max_samples`` sequences, each cut to ``seqlen`` tokens."""
    out: list[Batch] = []
    left = max_samples if max_samples is not None else None
    for ids, mask in batches:
        if left is not None:
            if left <= 0:
                break
            ids, mask = ids[:left], None if mask is None else mask[:left]
            left -= ids.shape[0]
        if seqlen is not None:
            ids, mask = ids[:, :seqlen], None if mask is None else mask[:, :seqlen]
        out.append((ids, mask))
    return out


def _sampled_losses(
    logits: torch.Tensor, mask: torch.Tensor | None, samples: int, generator: torch.Generator
):
    """Summed NLL of labels drawn from the model itself, one loss per draw (true Fisher)."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    probs = flat.detach().softmax(-1)
    keep = None if mask is None else mask.reshape(-1).to(flat.device, flat.dtype)
    for _ in range(samples):
        labels = torch.multinomial(probs.cpu(), 1, generator=generator).reshape(-1)
        nll = F.cross_entropy(flat, labels.to(flat.device), reduction="none")
        yield (nll if keep is None else nll * keep).sum()


def _token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None):
    """Summed next-token NLL over the real (unpadded) tokens."""
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        ids[:, 1:].reshape(-1),
        reduction="none",
    )
    if mask is not None:
        keep = (mask[:, 1:] * mask[:, :-1]).reshape(-1).to(nll.dtype)
        nll = nll * keep
    return nll.sum()


def collect_moments(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[Batch],
    gradients: bool = True,
    full: bool = False,
    fisher_labels: str = "model",
    samples: int = 1,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    scope: str = "model",
    source: Any = None,
) -> dict[str, LayerMoments]:
    """a (and b when ``gradients``, XᵀX/N and GᵀG/N when ``full``) of every layer.

    ``fisher_labels`` and ``samples``: which labels the backward passes use (module
    docstring); the draws come from a generator seeded with ``seed``. ``scope``:
    "model" (the loss at the head, backward through every block) or "block"
    (block-local probes). Blocks run one at a time on ``device`` (default: where
    the model is).

    The model is left as it was: parameters keep their values, devices and
    ``requires_grad`` flags, and no gradient is stored on them. When the model
    has no output head (an encoder), b is skipped with a warning.
    """
    if not batches:
        raise ValueError("activation-aware planning needs calibration batches, got none")
    if fisher_labels not in FISHER_LABELS:
        raise ValueError(
            f"fisher_labels={fisher_labels!r}: expected one of {', '.join(FISHER_LABELS)}"
        )
    if scope not in GRADIENT_SCOPES:
        raise ValueError(f"scope={scope!r}: expected one of {', '.join(GRADIENT_SCOPES)}")
    generator = torch.Generator().manual_seed(seed)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if device.type == "meta":
        device = torch.device("cpu")
    accs = {name: _Accumulator(module, gradients, full) for name, module in layers.items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with ExitStack() as stack:
            walk = stack.enter_context(open_walk(model, device, source))
            if gradients and scope == "model" and not walk.has_head:
                logger.warning("the model returns no logits: using input moments only")
                gradients = False
            outside = [n for n in layers if not any(n.startswith(b + ".") for b in walk.names)]
            for name, module in layers.items():
                handle = module.register_forward_hook(accs[name].forward_hook)
                stack.callback(handle.remove)
            for ids, mask in batches:
                token_mask = None if mask is None or bool(mask.all()) else mask.reshape(-1).bool()
                for acc in accs.values():
                    acc.mask = token_mask
                hidden, kwargs = walk.start([(ids, mask)])
                one = _OneBatch(walk, hidden[0], ModelWalk.detached(kwargs[0]), (ids, mask))
                if gradients and scope == "model":
                    one.end_to_end(accs, fisher_labels, samples, generator)
                    continue
                if gradients:
                    final = one.block_local(token_mask, generator)
                else:
                    final = walk.run(hidden, kwargs)[0]
                if outside:  # a selected head: its inputs (b only end to end)
                    with torch.no_grad():
                        next(walk.end([final], [(ids, mask)]))
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return {name: acc.moments() for name, acc in accs.items()}


class _OneBatch:
    """One calibration batch through the walk, with the backward the scope asks for."""

    def __init__(self, walk: Walk, hidden: torch.Tensor, kwargs: dict, batch: Batch) -> None:
        self.walk, self.hidden, self.kwargs, self.batch = walk, hidden, kwargs, batch

    def end_to_end(
        self,
        accs: dict[str, _Accumulator],
        labels: str,
        samples: int,
        generator: torch.Generator,
    ) -> None:
        """Forward keeping block boundaries, loss at the head, backward block by block."""
        for acc in accs.values():
            acc.active = False  # the recompute below counts each input once
        try:
            boundaries = [self.hidden]
            with torch.no_grad():
                for index in range(len(self.walk)):
                    with self.walk.block(index) as block:
                        boundaries.append(blockwise.run_block(block, boundaries[-1], self.kwargs))
        finally:
            for acc in accs.values():
                acc.active = True
        ids, mask = self.batch
        final = boundaries.pop().detach().requires_grad_(True)
        with torch.enable_grad():
            logits = next(self.walk.end([final], [self.batch]))
            if labels == "data":
                losses = [_token_loss(logits, ids.to(logits.device), _on(mask, logits))]
            else:
                losses = list(_sampled_losses(logits, mask, samples, generator))
            grads = _grads(losses, final)
            del logits, losses
            for index in reversed(range(len(self.walk))):
                with self.walk.block(index) as block:
                    x = boundaries.pop().detach().requires_grad_(True)
                    y = blockwise.run_block(block, x, self.kwargs)
                    grads = _grads([y], x, grads)

    def block_local(
        self, token_mask: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Each block on its own: a random probe of its relative output error, no model end."""
        x = self.hidden
        with torch.enable_grad():
            for index in range(len(self.walk)):
                with self.walk.block(index) as block:
                    x = x.detach().requires_grad_(True)
                    y = blockwise.run_block(block, x, self.kwargs)
                    probe = torch.randn(y.shape, generator=generator).to(y.device, y.dtype)
                    if token_mask is not None:
                        probe = probe * token_mask.reshape(y.shape[:-1])[..., None].to(probe)
                    scale = y.detach().float().pow(2).mean().clamp_min(1e-12).rsqrt()
                    torch.autograd.backward(y, probe * scale.to(y.dtype))
                    x = y.detach()
        return x


def _grads(
    outputs: list[torch.Tensor], x: torch.Tensor, upstream: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """d outputs / d x, once per upstream gradient (or per output), keeping the graph until the last."""
    count = len(upstream) if upstream is not None else len(outputs)
    found = []
    for k in range(count):
        out = outputs[0] if upstream is not None else outputs[k]
        grad_out = None if upstream is None else upstream[k]
        (g,) = torch.autograd.grad(out, x, grad_outputs=grad_out, retain_graph=k < count - 1)
        found.append(g)
    return found


def _on(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if mask is None else mask.to(like.device)


def moments_for(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[Batch],
    spec: GradientMoments,
    device: torch.device | str | None = None,
    source: Any = None,
) -> dict[str, LayerMoments]:
    """What ``spec`` (a method's :class:`GradientMoments`) asks for, on its share of ``batches``."""
    return collect_moments(
        model,
        layers,
        limit_batches(batches, spec.max_sequences, spec.max_tokens),
        gradients=spec.gradients,
        full=spec.full,
        fisher_labels=spec.labels,
        samples=spec.samples,
        seed=spec.seed,
        device=device,
        scope=spec.scope,
        source=source,
    )
