"""Input statistics of Linear layers, accumulated by forward hooks without storing activations.

"full" keeps XᵀX (in × in), "diag" only Σ x_j². Both count tokens, so the
result is H = (2/N)·XᵀX or its diagonal, exactly as if all calibration tokens
had been seen at once. Padded tokens (mask 0) are left out.

Each batch's product is computed on its own in the method's ``precision``
(float32 unless it asks for more) and added into a float64 sum, rounded once
at the end. A float64 sum of float32 values is exact unless, for one entry,
the batches' values span more than ~2²⁵ in magnitude, and even then the
rounding to float32 hides the difference but for ~1 case in 2²⁹. So the
result does not depend on the order of the batches, nor on how they are
split between processes (:mod:`~onecomp_core.engine.distributed`): two ranks
give the same bits as one process.
"""

from __future__ import annotations

from collections.abc import Iterator
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
        self.sum = torch.zeros(shape, dtype=wide_dtype(dtype), device=device)

    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        x = x.reshape(-1, x.shape[-1])
        if token_mask is not None:
            x = x[token_mask.reshape(-1).to(x.device).bool()]
        x = x.to(self.sum.device, self.dtype)
        if self.kind == "full":
            add_gram(self.sum, x, x)
        else:
            self.sum.add_(x.pow(2).sum(dim=0))
        self.tokens += x.shape[0]

    def accumulators(self) -> list[torch.Tensor]:
        """The running sums (what a distributed run all-reduces)."""
        return [self.sum]

    def hessian(self) -> torch.Tensor:
        """H = (2/N)·XᵀX (or its diagonal), in float32 unless the method asked for more."""
        if self.tokens == 0:
            raise RuntimeError("no calibration token reached this layer")
        h = self.sum.to(self.dtype) * (2.0 / self.tokens)
        return h if h.dtype == torch.float64 else h.float()


#: rows of one partial product: bounds the temporary of a wide layer (a 5632-wide one: 23 MB)
ROWS_PER_PRODUCT = 1024


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums of ``dtype`` products are kept in: float64 (exact for float32 values)."""
    return torch.float64 if torch.finfo(dtype).bits <= 32 else dtype


def add_gram(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += aᵀb``: the product in ``a``'s dtype, row block by row block, then added into the
    wider ``total`` (the blocks depend on the shapes only, never on the process count)."""
    for start in range(0, a.shape[1], ROWS_PER_PRODUCT):
        rows = slice(start, start + ROWS_PER_PRODUCT)
        total[rows].add_(a[:, rows].t() @ b)


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
                    self.stats[name] = InputStatistics(
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
        """Each layer's own H (layers that shared an accumulator get equal, separate tensors)."""
        out = {}
        for name in self.layers:
            owner = self._shares.get(name, name)
            if owner not in self.stats:
                raise RuntimeError(f"no calibration token reached layer {name!r}")
            out[name] = self.stats[owner].hessian()
        return out
