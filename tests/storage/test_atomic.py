"""The one atomic-write helper: the target holds the old content or the new, never half of it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from onecomp_core.storage.atomic import atomic_file, atomic_folder, write_json


def test_a_file_is_replaced_only_when_writing_succeeds(tmp_path):
    path = tmp_path / "manifest.json"
    write_json(path, {"finished": 1})
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text('{"finished": ')
        raise RuntimeError("crash half-way")
    assert path.read_text() == '{\n "finished": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".manifest.json.")
        tmp.write_text("new")
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_a_folder_appears_whole_and_replaces_only_when_allowed(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as tmp:
        (tmp / "part").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(out) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        with atomic_folder(out):
            pass
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b").write_text("second")
    assert [p.name for p in out.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize(
    "umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_what_is_written_follows_the_umask(tmp_path, umask, folder_mode, file_mode):
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with atomic_folder(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # creates it 0600
            (tmp / "sub").mkdir(mode=0o700)
        with atomic_file(tmp_path / "inputs.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == folder_mode
    assert stat.S_IMODE((tmp_path / "model" / "sub").stat().st_mode) == folder_mode
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "inputs.safetensors").stat().st_mode) == file_mode


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_writers_go_and_live_ones_stay(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    gone = [tmp_path / f".q.partial-{dead}-ab12cd34", tmp_path / f".q.old-{dead}-00ff00ff"]
    kept = [
        tmp_path / f".q.partial-{alive}-ab12cd34",
        tmp_path / ".other.partial-1-x",
        tmp_path / "q2",
    ]
    for path in gone[:1] + kept[:1]:
        path.mkdir()
        (path / "model.safetensors").write_text("half")
    for path in gone[1:] + kept[1:]:
        path.write_text("x")
    with atomic_folder(tmp_path / "q") as tmp:
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["q", *(p.name for p in kept)])


def test_overwriting_a_file_leaves_nothing_hidden(tmp_path):
    target = tmp_path / "afile"
    target.write_text("a file where the model goes")
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and target.is_dir()
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]
