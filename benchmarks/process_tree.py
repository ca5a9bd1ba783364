"""Run a command and measure its wall time and the peak resident memory of its process tree.

The peak is sampled: every ``interval`` seconds the resident set sizes of the
process and all its descendants are summed (psutil) and the largest sum kept,
so a run that forks (torchrun and its ranks) is counted whole. Resident pages
shared between processes (the mapped libraries) are counted once per process,
so the sum over N ranks overstates what they take together. The kernel's own
figure comes back as a cross-check: ``ru_maxrss`` from ``wait4`` on the child,
the peak of the largest single process of the tree (the child or any
descendant it waited for), never a sum.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

MB = 1024 * 1024


@dataclass
class TreeRun:
    """What one command did: exit status, wall seconds and memory peaks (MB)."""

    returncode: int | None  # None when it was stopped at the timeout
    wall_s: float
    peak_tree_rss_mb: float  # largest sampled sum of RSS over the process tree
    peak_processes: int  # processes in the tree at that peak
    maxrss_largest_mb: float  # the kernel's ru_maxrss of the largest process (wait4)
    samples: int
    timed_out: bool
    stdout: str
    stderr: str


def tree_rss(pid: int) -> tuple[int, int]:
    """(summed RSS bytes, process count) of ``pid`` and all its descendants; (0, 0) once gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = count = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, count


def run_tree(
    command: list[str],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    interval: float = 0.05,
    log_dir: str | Path | None = None,
) -> TreeRun:
    """Run ``command`` in its own session, sampling the tree's memory until it exits.

    Output goes to files (``log_dir`` or a temporary folder), not pipes, so a
    chatty child never blocks on a full pipe while we sample. At ``timeout``
    the whole session is killed and the run reported as timed out.
    """
    import tempfile

    logs = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="tree-run-"))
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / "stdout.txt", logs / "stderr.txt"
    peak = peak_count = samples = 0
    timed_out = False
    with out_path.open("w") as out, err_path.open("w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            rss, count = tree_rss(proc.pid)
            samples += 1
            if rss > peak:
                peak, peak_count = rss, count
            if timeout is not None and time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(interval)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return TreeRun(
        returncode=None if timed_out else proc.returncode,
        wall_s=wall,
        peak_tree_rss_mb=peak / MB,
        peak_processes=peak_count,
        maxrss_largest_mb=usage.ru_maxrss / 1024,  # Linux reports kilobytes
        samples=samples,
        timed_out=timed_out,
        stdout=out_path.read_text(),
        stderr=err_path.read_text(),
    )
