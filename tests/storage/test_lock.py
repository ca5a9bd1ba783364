"""Advisory locks: one live run per folder, released by death, no lock file left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from onecomp_core.storage import lock

REPO = Path(__file__).resolve().parents[2]


def _holder(lock_file: Path) -> subprocess.Popen:
    """Another process that takes ``lock_file`` and holds it until killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from onecomp_core.storage import lock
        with lock.holding({str(lock_file)!r}, "x"):
            print("held", flush=True)
            time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_at_once_naming_the_first(tmp_path):
    out = tmp_path / "q"
    holder = _holder(lock.beside(out))
    try:
        started = time.monotonic()
        with (
            pytest.raises(lock.FolderInUse) as err,
            lock.holding(lock.beside(out), f"output {out}"),
        ):
            pass
        assert time.monotonic() - started < 1
        message = str(err.value)
        assert message.startswith(
            f"output {out} is in use by another onecomp run (pid {holder.pid}, started "
        )
        assert "\n" not in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel released the lock with the process: the stale file does not block
    assert lock.beside(out).is_file()
    with lock.holding(lock.beside(out), "output"):
        assert str(os.getpid()) in lock.beside(out).read_text()
    assert not lock.beside(out).exists()


def test_locks_are_reentrant_in_a_process_and_leave_nothing(tmp_path):
    path = lock.inside(tmp_path / "ckpt")
    with lock.holding(path, "checkpoint"):
        with lock.holding(path, "checkpoint"):
            assert path.is_file()
        assert path.is_file()  # the outer holder still has it
    assert not path.exists()
    assert not (tmp_path / "ckpt").exists()  # made only for the lock, and still empty


def test_a_folder_that_received_files_stays(tmp_path):
    folder = tmp_path / "a" / "b"
    with lock.holding(lock.inside(folder), "checkpoint"):
        (folder / "manifest.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def test_an_unwritable_place_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot create its lock file"):
        with lock.holding(blocker / "q.lock", "output"):
            pass
