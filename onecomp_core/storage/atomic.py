"""Atomic writes: nothing half-written is ever left under the final name.

Every file or folder onecomp writes (saved models, results, checkpoints) is
first written under a temporary name beside its target, in the same
directory so that the final ``os.replace`` is a rename on one filesystem,
and renamed into place only when writing succeeded. A crash, an exception
or Ctrl-C leaves the previous content (or nothing) and no temporary files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
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


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes ``out`` only if the block succeeds.

    An existing ``out`` is refused unless ``overwrite``; when replaced, it is
    moved aside first and deleted only after the new folder is in place.
    """
    out = check_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, out, overwrite=True)


def move_into_place(folder: Path, out: Path, overwrite: bool) -> Path:
    """Rename the finished ``folder`` to ``out``; a previous ``out`` is deleted only after.

    ``folder`` on another filesystem (a checkpoint folder elsewhere) is first
    copied beside ``out``, so the last step is always a rename.
    """
    out = check_free(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(folder).st_dev != os.stat(out.parent).st_dev:
        near = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        shutil.rmtree(near)
        shutil.copytree(folder, near)
        shutil.rmtree(folder)
        folder = near
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(folder, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(folder, out)
    return out


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name, not mkstemp: the file gets the usual permissions when the writer creates it
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """``data`` as JSON at ``path``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent))
