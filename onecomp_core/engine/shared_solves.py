"""The solves of one sub-group, spread over the ranks of a distributed run.

A method whose rows are separable (:meth:`~onecomp_core.contract.Method.row_block`
> 0, GPTQ) has every layer's rows cut into one contiguous slice per rank, at
multiples of its row block; each rank solves its slice of every layer and the
slices are joined (:meth:`~onecomp_core.contract.Method.join_rows`). So every
rank does an equal share of every layer, the widest ``down_proj`` included,
instead of one rank solving it alone; while every rank solves a slice of the
same layer, the ranks build its inverse-Hessian factor together
(:mod:`onecomp_core.kernels.team`). Other methods get whole layers, assigned
by solve cost (longest first). Every rank ends with every result; one process
solves each job in order, exactly as before.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..contract import LayerJob, LayerMoments, LayerResult, Method
from ..kernels.team import working_together
from .distributed import Ranks, assign_layers, row_shares, solve_cost


def solve_jobs(ranks: Ranks, method: Method, jobs: dict[str, LayerJob]) -> dict[str, LayerResult]:
    """Every job's result, on every rank (each rank solves its share)."""
    if not ranks.distributed:
        return {name: method.quantize(job) for name, job in jobs.items()}
    cuts = {name: row_slices(method, job, ranks.world) for name, job in jobs.items()}
    whole = [name for name, cut in cuts.items() if cut is None]
    owners = assign_layers({n: solve_cost(jobs[n].module) for n in whole}, ranks.world)
    local: dict[str, LayerResult] = {}
    for name, job in jobs.items():
        cut = cuts[name]
        if cut is None:
            if owners[name] == ranks.rank:
                local[name] = method.quantize(job)
        elif all(rows.stop > rows.start for rows in cut):  # every rank solves this layer now
            with working_together(ranks.team()):
                local[name] = method.quantize(rows_of(job, cut[ranks.rank]))
        elif cut[ranks.rank].stop > cut[ranks.rank].start:
            local[name] = method.quantize(rows_of(job, cut[ranks.rank]))
    shared = ranks.exchange_parts(local)
    results: dict[str, LayerResult] = {}
    for name, job in jobs.items():
        if cuts[name] is None:
            results[name] = shared[owners[name]][name]
            continue
        parts = [part[name] for part in shared if name in part]
        joined = method.join_rows(parts)
        if joined is None:  # a slice fell back on its own: the whole layer, on every rank alike
            joined = method.quantize(job)
        else:
            joined.quantization_time = sum(p.quantization_time for p in parts)
        results[name] = joined
    return results


def job_of(
    name: str,
    layers: dict[str, nn.Module],
    hessian: torch.Tensor | None,
    moments: dict[str, LayerMoments] | None,
    hands_over: bool = False,
) -> LayerJob:
    """The job of layer ``name``: its statistics and, when collected, its gradient moments;
    ``hands_over``: the job holds the only reference to ``hessian`` (see LayerJob)."""
    layer_moments = (moments or {}).get(name)
    gradients = None if layer_moments is None else layer_moments.b
    return LayerJob(name, layers[name], hessian, gradients, hands_over=hands_over)


def row_slices(method: Method, job: LayerJob, world: int) -> list[slice] | None:
    """One contiguous slice of ``job``'s rows per rank, cut at multiples of the method's row
    block (some empty when the layer has fewer blocks than ranks); None: solved whole."""
    block = method.row_block(job)
    return row_shares(job.weight.shape[0], world, block) if block > 0 else None


def rows_of(job: LayerJob, rows: slice) -> LayerJob:
    """The job for a slice of the layer's rows: a weight-only Linear holding them, the same
    statistics, the slice of the output-gradient moments."""
    weight = job.weight[rows]
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    module.weight = nn.Parameter(weight, requires_grad=False)
    gradients = None if job.gradients is None else job.gradients[rows]
    return dataclasses.replace(job, module=module, gradients=gradients)


__all__ = ["job_of", "row_slices", "rows_of", "solve_jobs"]
