"""The one atomic-write helper: the target holds the old content or the new, never half of it."""

from __future__ import annotations

import pytest

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
