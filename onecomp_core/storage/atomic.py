"""Atomic writes: nothing half-written is ever left under the final name.

Every file or folder onecomp writes (saved models, results, checkpoints) is
first written under a temporary name beside its target, in the same
directory so that the final ``os.replace`` is a rename on one filesystem,
and renamed into place only when writing succeeded. A crash, an exception
or Ctrl-C leaves the previous content (or nothing) and no temporary files.

Temporary names carry the writer's pid (``.<name>.partial-<pid>-<hex>``,
``.<name>.old-<pid>-<hex>``), so what a SIGKILL left behind is recognised
and removed by the next write of the same target once that pid is gone.
What is renamed into place follows the umask, as a plain ``open`` or
``mkdir`` would (safetensors itself creates its files 0600).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def check_free(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a Path; an error naming the way out when it exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output folder {out} already exists (pass --overwrite / overwrite=True to replace it)"
        )
    return out


def _temp_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _leftover_of_dead(path: Path) -> bool:
    """Whether ``path`` is one of our temporary names whose writer is no longer running."""
    for kind in (".partial-", ".old-"):
        _, sep, tail = path.name.rpartition(kind)
        if sep and path.name.startswith("."):
            pid = tail.split("-", 1)[0]
            return pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid))
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(target: str | Path) -> list[Path]:
    """Remove the temporary copies of ``target`` that killed writers left; returns them."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    found = [
        p
        for pattern in (f".{target.name}.partial-*", f".{target.name}.old-*")
        for p in target.parent.glob(pattern)
        if _leftover_of_dead(p)
    ]
    for path in found:
        _remove(path)
    return found


def remove_leftovers_in(folder: str | Path) -> list[Path]:
    """Remove every temporary copy that killed writers left directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(".*") if _leftover_of_dead(p)]
    for path in found:
        _remove(path)
    return found


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give ``path`` (and all below it) the modes a plain ``open``/``mkdir`` would give."""
    mask = _umask()

    def fix(p: Path, directory: bool) -> None:
        executable = directory or bool(p.stat().st_mode & 0o111)
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)

    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs:
                fix(Path(root) / name, True)
            for name in files:
                fix(Path(root) / name, False)
        fix(path, True)
    elif path.exists():
        fix(path, False)


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out`` only if the block succeeds.

    An existing ``out`` is refused unless ``overwrite``; when replaced, it is
    moved aside first and deleted only after the new folder is in place.
    """
    out = check_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = _temp_name(out, "partial")
    tmp.mkdir()
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists() or out.is_symlink():
        old = _temp_name(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "partial")
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent))
