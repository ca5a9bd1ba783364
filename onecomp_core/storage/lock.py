"""Advisory locks on the folders a run writes, so two runs never share one.

A run holds ``fcntl.flock`` on a small lock file: ``<out>.lock`` beside an
output, ``.lock`` inside a checkpoint folder. The kernel drops the lock when
the process dies (even by SIGKILL), so a crashed run never blocks the next
one; a second live run fails at once with one line naming the first (its
pid, start time and command). The file holds that description and is
removed when the holder exits normally. Locks are re-entrant within a
process: the CLI takes them first, the seed API's save and run take them
again for users who call it directly.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: lock file path → (open descriptor, depth) held by this process
_HELD: dict[str, tuple[int, int]] = {}


class FolderInUse(FileExistsError):
    """Another live process holds the lock: the message names it."""


def beside(target: str | Path) -> Path:
    """The lock file of an output (file or folder): ``<target>.lock`` next to it."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


def inside(folder: str | Path) -> Path:
    """The lock file of a folder a run keeps writing into (a checkpoint): ``folder/.lock``."""
    return Path(folder) / ".lock"


@contextmanager
def holding(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold the lock ``lock_file`` for the block; ``what`` names the guarded thing in errors.

    Raises :class:`FolderInUse` at once when another process holds it.
    """
    key = os.path.abspath(lock_file)
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth - 1)
        return
    made = _missing_folders(Path(key).parent)
    fd = _acquire(Path(key), what)
    _HELD[key] = (fd, 1)
    try:
        yield
    finally:
        del _HELD[key]
        # unlink first, while still holding it: a waiting process then sees a stale inode
        Path(key).unlink(missing_ok=True)
        os.close(fd)
        for folder in made:  # folders made only to hold the lock go too, if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _acquire(path: Path, what: str) -> int:
    for _ in range(10):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ValueError(
                f"{what}: cannot create its lock file {path} ({err.strerror or err})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise FolderInUse(
                f"{what} is in use by another onecomp run ({holder}); wait for it to finish "
                "or choose another folder"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _write_holder(fd)
            return fd
        os.close(fd)  # the holder removed this file as we opened it: take the new one
    raise FolderInUse(f"{what}: could not take the lock {path} (it keeps being replaced)")


def _write_holder(fd: int) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
    text = f"pid {os.getpid()}, started {started}: {command}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, text[:300].encode(errors="replace"), 0)


def _describe(fd: int) -> str:
    try:
        text = os.pread(fd, 400, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return " ".join(text.split()) or "pid unknown"
