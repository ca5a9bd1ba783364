"""Starting and ending the process group of a ``torchrun`` launch.

``torchrun`` (one node or several, through its rendezvous) starts one process
per device and sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. Without those variables (or with one process)
nothing here does anything: one process runs exactly as before. With them,
the CLI checks its input first (identically on every rank, so a bad value
fails everywhere before any rank waits for another), then
:func:`process_group` joins the group: NCCL when the compute device is a GPU
(``cuda:LOCAL_RANK`` for ``--device auto`` or ``cuda``), gloo on the CPU.
Only rank 0 prints progress, warnings and the result table.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch

from .distributed import Ranks

#: how long a rank waits in a collective for the others (a rank-0-only step can be long);
#: a rank that fails exits and torchrun stops the others, so this is not how errors surface
TIMEOUT_ENV = "ONECOMP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 6 * 3600

#: whether this process joined a group (its errors are its own from then on)
_JOINED = False


def launched() -> Ranks:
    """The rank and world size torchrun gave this process (one process when not launched)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    return Ranks(rank, world) if world > 1 else Ranks()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def rank_device(device: str) -> str:
    """The device of this rank: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun.

    One explicit ``cuda:N`` for several processes of one node is refused:
    they would all share that GPU.
    """
    if not launched().distributed:
        return device
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_gpu:
        return f"cuda:{local_rank()}"
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if device.startswith("cuda:") and local_world > 1:
        raise ValueError(
            f"--device {device}: under torchrun each of the {local_world} processes of a node "
            "takes its own GPU (cuda:LOCAL_RANK); use --device cuda or auto"
        )
    return device


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


@contextmanager
def process_group(device: str) -> Iterator[Ranks]:
    """Join torchrun's process group for the run (and leave it after); yields this rank.

    Outside torchrun this yields a one-process :class:`Ranks` and starts nothing.
    """
    ranks = launched()
    if not ranks.distributed:
        yield ranks
        return
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    kwargs = {"device_id": torch.device(device)} if device.startswith("cuda") else {}
    dist.init_process_group(backend_for(device), timeout=timeout, **kwargs)
    global _JOINED
    _JOINED = True
    if not ranks.is_writer:
        _quiet()
    try:
        yield Ranks.current()
    except RuntimeError as exc:
        if not _peer_lost(exc):
            raise
        raise PeerLost(
            f"another rank failed first (its own line says why); here: {_first_line(exc)}"
        ) from exc
    finally:
        dist.destroy_process_group()


class PeerLost(RuntimeError):
    """A collective failed because another rank stopped: reported in one line, not a traceback."""


def _peer_lost(exc: BaseException) -> bool:
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("Connection closed by peer", "remote worker", "Connection reset")
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _quiet() -> None:
    """No warnings and no progress bars (ours, transformers', the hub's) on ranks other than 0."""
    logging.getLogger().setLevel(logging.ERROR)
    os.environ["ONECOMP_QUIET"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # transformers is a dependency; this only guards odd installs
        pass


def error_source() -> str | None:
    """How a failing process names itself in its one error line; None: say nothing.

    Under torchrun a check that fails before the group is joined fails on every
    rank alike, so only rank 0 reports it; a failure after that is reported by
    the rank it happened on (torchrun then stops the others).
    """
    ranks = launched()
    if not ranks.distributed:
        return ""
    if not _JOINED and not ranks.is_writer:
        return None
    return f" (rank {ranks.rank} of {ranks.world})"
