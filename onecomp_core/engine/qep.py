"""QEP: quantization error propagation (Arai & Ichikawa, NeurIPS 2025).

Layer-wise quantization fits each layer to its own, already perturbed inputs
X̂. QEP first moves the weight towards what the full-precision model computed
from its inputs X: the least-squares solution of min ‖X Wᵀ − X̂ W′ᵀ‖ is
W′ = W + W·C·H⁻¹ with H = (2/N)·X̂ᵀX̂ and C = (2/N)·(X − X̂)ᵀX̂. QEP applies
a damped fraction α of that step, then quantizes W′ with H as usual.
Both matrices are accumulated batch by batch, so no activation is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..contract import Config, param
from . import blocks as blockwise


@dataclass
class QEPConfig(Config):
    """QEP's settings (the seed's names), validated like every method's parameters."""

    percdamp: float = param(0.01, ge=0, doc="damping λ = percdamp·mean(diag H)")
    perccorr: float = param(0.5, ge=0, le=1, doc="α: the fraction of the correction applied")
    exclude_layer_keywords: list = param(
        items=str, factory=lambda: ["mlp.down_proj"], doc="layers left uncorrected"
    )
    #: the seed's field, accepted and saved; the correction is solved on the block's device
    device: str | None = param(None, str, optional=True, doc="unused: the block's device")

    def corrects(self, name: str) -> bool:
        return not any(k in name for k in self.exclude_layer_keywords)


def correct_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    cross: torch.Tensor,
    perccorr: float,
    percdamp: float,
) -> torch.Tensor:
    """W + α·W·C·(H + λI)⁻¹ with λ = percdamp·mean(diag H), solved by Cholesky."""
    h = hessian.double()
    damp = percdamp * torch.diagonal(h).mean().clamp(min=1e-12)
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        solved = torch.linalg.lstsq(h, cross.double().t()).solution
    else:
        solved = torch.cholesky_solve(cross.double().t(), factor)  # (H+λI)⁻¹ Cᵀ
    w = weight.double()
    return (w + perccorr * w @ solved.t()).to(weight.dtype)


class PairedStatistics:
    """Streams H = (2/N)·X̂ᵀX̂ and C = (2/N)·(X − X̂)ᵀX̂ for one layer."""

    def __init__(self, in_features: int, dtype: torch.dtype, device: torch.device):
        self.xtx = torch.zeros(in_features, in_features, dtype=dtype, device=device)
        self.cross = torch.zeros_like(self.xtx)
        self.tokens = 0

    def add(
        self,
        x_fp: torch.Tensor,
        x_q: torch.Tensor,
        mask: torch.Tensor | None,
        rows: slice | None = None,
    ) -> None:
        """Add one batch; ``rows``: only those rows of both sums (a distributed run's share)."""
        x_fp = x_fp.reshape(-1, x_fp.shape[-1])
        x_q = x_q.reshape(-1, x_q.shape[-1])
        if mask is not None:
            keep = mask.reshape(-1).to(x_q.device).bool()
            x_fp, x_q = x_fp[keep], x_q[keep]
        x_fp = x_fp.to(self.xtx.device, self.xtx.dtype)
        x_q = x_q.to(self.xtx.device, self.xtx.dtype)
        if rows is None:
            self.xtx.addmm_(x_q.t(), x_q)
            self.cross.addmm_((x_fp - x_q).t(), x_q)
        else:
            self.xtx[rows].addmm_(x_q[:, rows].t(), x_q)
            self.cross[rows].addmm_((x_fp - x_q)[:, rows].t(), x_q)
        self.tokens += x_q.shape[0]

    def accumulators(self) -> list[torch.Tensor]:
        """The running sums (what a distributed run hands from rank to rank)."""
        return [self.xtx, self.cross]

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokens == 0:
            raise RuntimeError("no calibration token reached this layer")
        scale = 2.0 / self.tokens
        return (self.xtx * scale).float(), (self.cross * scale).float()


class PairedCollector:
    """Hooks the same layers in the full-precision and the quantized copy of a block.

    For each batch, run the full-precision block first (its layer inputs are
    held for that batch only), then the quantized block: each quantized layer
    input is paired with the full-precision one of the same tokens.
    """

    def __init__(
        self, fp_layers: dict[str, nn.Module], q_layers: dict[str, nn.Module], dtype: torch.dtype
    ):
        self.fp_layers, self.q_layers = fp_layers, q_layers
        self.stats = {
            n: PairedStatistics(m.in_features, dtype, m.weight.device) for n, m in q_layers.items()
        }
        self.token_mask: torch.Tensor | None = None
        self._held: dict[str, torch.Tensor] = {}

    @contextmanager
    def hooked(self) -> Iterator[PairedCollector]:
        handles = [m.register_forward_pre_hook(self._hold(n)) for n, m in self.fp_layers.items()]
        handles += [m.register_forward_pre_hook(self._pair(n)) for n, m in self.q_layers.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._held.clear()

    def _hold(self, name: str):
        def hook(module, args):
            self._held[name] = args[0].detach()

        return hook

    def _pair(self, name: str):
        def hook(module, args):
            self.stats[name].add(self._held.pop(name), args[0].detach(), self.token_mask)

        return hook


def paired_statistics(
    block: nn.Module,
    fp_block: nn.Module,
    fp_group: dict[str, nn.Module],
    group: dict[str, nn.Module],
    streams: Any,
    needs: Any,
    on_batch: Callable[[int, PairedCollector], None] | None = None,
) -> PairedCollector:
    """H and C of every layer of ``group`` over the calibration batches.

    Each batch runs through the full-precision copy of the block (inputs X)
    and the block being quantized (inputs X̂), each pass stopping after the
    group's last layer. ``streams``: the engine's activations (``quantized``,
    ``full_precision``, ``kwargs``, ``token_masks``); ``needs``: the method's;
    ``on_batch(i, collector)`` is called before the i-th batch (a distributed run records).
    """
    collector = PairedCollector(fp_group, group, needs.precision)
    stop_fp = blockwise.StopAfter(list(fp_group.values()))
    stop_q = blockwise.StopAfter(list(group.values()))
    with torch.no_grad(), collector.hooked(), stop_fp, stop_q:
        for i, (xq, xf, kw, mask) in enumerate(
            zip(
                streams.quantized,
                streams.full_precision,
                streams.kwargs,
                streams.token_masks,
                strict=True,
            )
        ):
            if on_batch is not None:
                on_batch(i, collector)
            collector.token_mask = mask
            stop_fp.run(fp_block, xf, kw)
            stop_q.run(block, xq, kw)
    return collector


def corrected_hessian(
    module: nn.Module, stats: PairedStatistics, config: QEPConfig, name: str
) -> torch.Tensor:
    """The layer's H, after moving its weight by QEP's correction (unless excluded)."""
    hessian, cross = stats.matrices()
    if config.perccorr > 0 and config.corrects(name):
        module.weight.data = correct_weight(
            module.weight.data, hessian, cross, config.perccorr, config.percdamp
        )
    return hessian


def corrected_hessians(
    group: dict[str, nn.Module], stats: dict[str, PairedStatistics], config: QEPConfig, diag: bool
) -> dict[str, torch.Tensor | None]:
    """Each layer's H of a sub-group after its correction (:func:`corrected_hessian`); only
    the diagonal when ``diag``."""
    hessians: dict[str, torch.Tensor | None] = {}
    for name, module in group.items():
        hessian = corrected_hessian(module, stats[name], config, name)
        hessians[name] = hessian.diagonal().clone() if diag else hessian
    return hessians
