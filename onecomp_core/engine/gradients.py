"""Second moments of layer inputs (a) and of the loss gradient at layer outputs (b).

One forward (and, for b, one backward) pass of the original model over the
Runner's calibration batches. Hooks add x_j² and g_i² into running sums, so
no activation is kept beyond what autograd itself holds for one batch:

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
"""

from __future__ import annotations

import inspect
import logging
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch import nn

from ..contract.needs import GRADIENT_LABELS as FISHER_LABELS
from ..contract.views import LayerMoments

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

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().reshape(-1, t.shape[-1])
        if self.mask is not None:
            t = t[self.mask.to(t.device)]
        return t.double()

    def forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
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
    keep = None if mask is None else mask.reshape(-1).to(flat.dtype)
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
) -> dict[str, LayerMoments]:
    """a (and b when ``gradients``, XᵀX/N and GᵀG/N when ``full``) of every layer.

    ``fisher_labels`` and ``samples``: which labels the backward passes use (module
    docstring); the draws come from a generator seeded with ``seed``.

    The model is left as it was: parameters keep their values and
    ``requires_grad`` flags, and no gradient is stored on them. When the
    model has no logits (an encoder), b is skipped with a warning.
    """
    if not batches:
        raise ValueError("activation-aware planning needs calibration batches, got none")
    if fisher_labels not in FISHER_LABELS:
        raise ValueError(
            f"fisher_labels={fisher_labels!r}: expected one of {', '.join(FISHER_LABELS)}"
        )
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    accs = {name: _Accumulator(module, gradients, full) for name, module in layers.items()}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    embeddings = model.get_input_embeddings() if gradients else None
    takes_cache = "use_cache" in inspect.signature(model.forward).parameters
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with ExitStack() as stack:
            for name, module in layers.items():
                handle = module.register_forward_hook(accs[name].forward_hook)
                stack.callback(handle.remove)
            if embeddings is not None:
                # gradients must flow from the first activation on, with frozen weights
                handle = embeddings.register_forward_hook(
                    lambda _m, _a, out: out.detach().requires_grad_(True)
                )
                stack.callback(handle.remove)
            for ids, mask in batches:
                token_mask = None if mask is None or bool(mask.all()) else mask.reshape(-1).bool()
                for acc in accs.values():
                    acc.mask = token_mask
                call = {"input_ids": ids.to(device)}
                if takes_cache:
                    call["use_cache"] = False
                if mask is not None:
                    call["attention_mask"] = mask.to(device)
                with torch.set_grad_enabled(gradients):
                    out = model(**call)
                    logits = getattr(out, "logits", None)
                    if gradients and logits is None:
                        logger.warning("the model returns no logits: using input moments only")
                        gradients = False
                        continue
                    if gradients and fisher_labels == "data":
                        _token_loss(
                            logits, call["input_ids"], call.get("attention_mask")
                        ).backward()
                    elif gradients:
                        losses = list(_sampled_losses(logits, mask, samples, generator))
                        for k, loss in enumerate(losses):
                            loss.backward(retain_graph=k < len(losses) - 1)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return {name: acc.moments() for name, acc in accs.items()}
