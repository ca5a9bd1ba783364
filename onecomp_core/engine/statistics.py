"""Input statistics of Linear layers, accumulated by forward hooks without storing activations.

"full" keeps XᵀX (in × in) in the quantizer's ``hessian_dtype``; "diag" keeps
only Σ x_j². Both count tokens, so the result is H = (2/N)·XᵀX or its
diagonal, exactly as if all calibration tokens had been seen at once. Padded
tokens (mask 0) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class InputStatistics:
    """Running XᵀX (or its diagonal) of one layer's inputs."""

    def __init__(self, in_features: int, kind: str, dtype: torch.dtype, device: torch.device):
        if kind not in ("full", "diag"):
            raise ValueError(f"statistics kind {kind!r}: expected 'full' or 'diag'")
        self.kind, self.dtype, self.tokens = kind, dtype, 0
        shape = (in_features, in_features) if kind == "full" else (in_features,)
        self.sum = torch.zeros(shape, dtype=dtype, device=device)

    def add(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None, rows: slice | None = None
    ) -> None:
        """Add one batch's inputs; ``rows``: only those rows of XᵀX (a distributed run splits
        the rows over its ranks; the same products, so the same bits; a diagonal is whole)."""
        x = x.reshape(-1, x.shape[-1])
        if token_mask is not None:
            x = x[token_mask.reshape(-1).to(x.device).bool()]
        x = x.to(self.sum.device, self.dtype)
        if self.kind == "full" and rows is not None:
            self.sum[rows].addmm_(x[:, rows].t(), x)
        elif self.kind == "full":
            self.sum.addmm_(x.t(), x)
        else:
            self.sum.add_(x.pow(2).sum(dim=0))
        self.tokens += x.shape[0]

    def accumulators(self) -> list[torch.Tensor]:
        """The running sums (what a distributed run hands from rank to rank)."""
        return [self.sum]

    def hessian(self, consume: bool = False) -> torch.Tensor:
        """H = (2/N)·XᵀX (or its diagonal), in float32 unless the accumulator is wider.

        ``consume`` scales the accumulator in place and hands it over (the same
        numbers): a 5632-wide ``down_proj`` then holds one (in × in) matrix, not two.
        """
        if self.tokens == 0:
            raise RuntimeError("no calibration token reached this layer")
        if consume:
            h, self.sum = self.sum.mul_(2.0 / self.tokens), None
        else:
            h = self.sum * (2.0 / self.tokens)
        return h if h.dtype == torch.float64 else h.float()


class StatisticsCollector:
    """Pre-forward hooks on a set of layers; :meth:`new_batch` is called by the caller per batch.

    Layers that read the very same input tensor (q/k/v, gate/up) share one
    accumulator: XᵀX is computed once for them, and each still gets its own
    Hessian tensor. Pre-hooks (not forward hooks) so a pass can stop as soon
    as the last layer of interest was entered (:func:`~.blocks.run_partial`).
    """

    def __init__(self, layers: dict[str, nn.Module], kind: str, dtype: torch.dtype):
        self.kind, self.dtype, self.layers = kind, dtype, layers
        self.stats: dict[str, InputStatistics] = {}
        self.token_mask: torch.Tensor | None = None
        self._shares: dict[str, str] = {}  # layer → layer whose accumulator it shares
        #: makes an accumulator (a distributed run puts a recorder in front of it)
        self.new_stats: Callable[..., InputStatistics] = InputStatistics
        self._batch = 0
        self._seen: list[
            tuple[torch.Tensor, str]
        ] = []  # this batch's inputs (held: ids stay unique)

    def new_batch(self, token_mask: torch.Tensor | None) -> None:
        if self._seen:
            self._batch += 1
        self.token_mask, self._seen = token_mask, []

    @contextmanager
    def hooked(self) -> Iterator[StatisticsCollector]:
        handles = [
            module.register_forward_pre_hook(self._hook(name))
            for name, module in self.layers.items()
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._seen = []

    def _owner(self, name: str, x: torch.Tensor) -> str:
        """The layer whose accumulator ``name`` adds to (decided on the first batch)."""
        same = next((owner for seen, owner in self._seen if seen is x), None)
        if self._batch == 0 and name not in self._shares:
            self._shares[name] = same or name
        owner = self._shares.get(name, name)
        if (owner != name) != (same is not None) or (same is not None and same != owner):
            raise RuntimeError(f"layer {name!r} shares its input differently from batch to batch")
        return owner

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            owner = self._owner(name, x)
            if owner == name:
                if name not in self.stats:
                    self.stats[name] = self.new_stats(
                        module.in_features, self.kind, self.dtype, module.weight.device
                    )
                self.stats[name].add(x.detach(), self.token_mask)
                self._seen.append((x, name))

        return hook

    def owners(self) -> list[nn.Module] | None:
        """After the first batch: the layers that own an accumulator (a pass may stop at them)."""
        if self._batch == 0:
            return None
        return [m for n, m in self.layers.items() if self._shares.get(n, n) == n]

    def hessians(self) -> dict[str, torch.Tensor]:
        """Each layer's own H (layers that shared an accumulator get equal, separate tensors).

        Called once, at the end: the accumulators are consumed (the last layer
        reading one gets it, scaled in place).
        """
        owners = {name: self._shares.get(name, name) for name in self.layers}
        last = {owner: name for name, owner in owners.items()}
        out = {}
        for name, owner in owners.items():
            if owner not in self.stats:
                raise RuntimeError(f"no calibration token reached layer {name!r}")
            out[name] = self.stats[owner].hessian(consume=last[owner] == name)
        self.stats.clear()
        return out


def model_statistics(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: list[tuple[torch.Tensor, torch.Tensor | None]],
    kind: str,
    precision: torch.dtype,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Input statistics of ``layers`` from whole-model forwards (layers outside the blocks,
    such as a selected ``lm_head``). ``batches``: (ids, attention mask or None)."""
    collector = StatisticsCollector(layers, kind, precision)
    model.to(device)
    with torch.no_grad(), collector.hooked():
        for ids, mask in batches:
            collector.new_batch(token_mask(mask))
            model(
                input_ids=ids.to(device),
                attention_mask=None if mask is None else mask.to(device),
            )
    model.to("cpu")
    return collector.hessians()


def token_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The tokens statistics count: None (all of them) unless some are padding."""
    return None if mask is None or bool(mask.all()) else mask
