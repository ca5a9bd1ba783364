"""Where outputs go, checked before any long work: a usable name, a writable place, free space.

A run that fails only when it saves (after hours) loses everything; these
checks make the same mistakes fail in one line at the start. They test the
real thing (a probe folder is created and removed in the nearest existing
folder), so read-only mounts, ``/proc`` and ``/sys`` fail for root as well.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .atomic import check_free


def check_destination(out: str | Path, overwrite: bool, option: str = "--out") -> Path:
    """``out`` as a Path once it is a new folder name in a place onecomp can write.

    Refused, each in one line naming ``option``: a path that names no folder
    (``.``, ``..``, ``/``), an existing output without ``overwrite``, a folder
    holding the current directory (replacing it would delete where we run),
    a path under a regular file, and a place where no folder can be created.
    """
    path = Path(out).expanduser()
    resolved = path.resolve()
    if path.name in ("", ".", "..") or resolved == Path(resolved.anchor):
        raise ValueError(
            f"{option} {out}: names no new folder (it is {resolved}); give a folder name, "
            f"e.g. {option} out/model"
        )
    check_free(path, overwrite)
    cwd = Path.cwd().resolve()
    if overwrite and (cwd == resolved or resolved in cwd.parents):
        raise ValueError(
            f"{option} {out}: holds the current folder; replacing it would delete it, "
            "choose another output folder"
        )
    check_writable(path, option)
    return path


def check_writable(path: str | Path, option: str) -> Path:
    """The nearest existing folder at or above ``path``'s parent, once a folder can be made there."""
    path = Path(path).expanduser()
    base = nearest_existing(path.parent)
    if not base.is_dir():
        raise NotADirectoryError(f"{option} {path}: {base} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".onecomp-write-probe-", dir=base)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PermissionError(
            f"{option} {path}: cannot create a folder in {base} ({reason})"
        ) from None
    os.rmdir(probe)
    return base


def check_free_space(targets: dict[str, Path], need: dict[str, int]) -> None:
    """Enough free space for each target (option → path) on its filesystem, summed per device.

    ``need`` maps the same options to the bytes each will take at most. The
    message says how much is needed and free, and where.
    """
    per_device: dict[int, list[str]] = {}
    base_of = {option: nearest_existing(path) for option, path in targets.items()}
    for option, base in base_of.items():
        per_device.setdefault(base.stat().st_dev, []).append(option)
    for options in per_device.values():
        base = base_of[options[0]]
        free = shutil.disk_usage(base).free
        wanted = sum(need[o] for o in options)
        if free < wanted:
            raise OSError(
                f"{' and '.join(options)}: not enough free disk space in {base}: about "
                f"{_size(wanted)} needed, {_size(free)} free; free some space or choose "
                "another folder"
            )


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (never empty: the anchor or ``.`` ends it)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"  # pragma: no cover
