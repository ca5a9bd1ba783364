"""A team of real processes (gloo) builds the inverse-Hessian factor a lone process builds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onecomp_core.kernels.hessian_inverse import flipped_hessian, inverse_cholesky_flipped
from onecomp_core.kernels.team import Team, current_team, working_together

N = 1300  # three 512-column slices, the last one short: both members own some


def _factor(order: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * N, N, generator=g)
    h = x.t() @ x / x.shape[0]
    h[5, :], h[:, 5] = 0.0, 0.0  # a dead input
    mean = torch.diagonal(h)[order].mean()
    inverse, damp = inverse_cholesky_flipped(
        lambda: flipped_hessian(h, order, torch.device("cpu")), 0.01, mean
    )
    assert damp == 0.01
    return inverse.contiguous()


def _order() -> torch.Tensor:
    return torch.randperm(N, generator=torch.Generator().manual_seed(1))


def _member(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    address = f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        with working_together(Team(rank, world, dist.broadcast)):
            inverse = _factor(_order())
        torch.save(inverse, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # as each member: LAPACK's bits depend on the threads
def test_two_processes_build_the_factor_a_lone_process_builds(tmp_path):
    mp.spawn(_member, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    alone = _factor(_order())
    for rank in (0, 1):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), alone), rank


def test_the_team_is_only_there_inside_the_block():
    team = Team(0, 2, lambda tensor, source: None)
    assert current_team() is None
    with working_together(team):
        assert current_team() is team
        with working_together(None):
            assert current_team() is None  # a nested lone solve
        assert current_team() is team
    assert current_team() is None
    with working_together(Team(0, 1, lambda tensor, source: None)):
        assert current_team() is None  # a team of one works alone
