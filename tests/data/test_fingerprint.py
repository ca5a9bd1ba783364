"""Resume keys by content: equal for the same bytes anywhere, different for other bytes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from onecomp_core.data import fingerprint
from onecomp_core.rtn import RTN

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"


def _old(path: Path) -> None:
    """Date a file back an hour, as a model that was downloaded earlier is."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3600 * 10**9))


def test_a_copy_elsewhere_has_the_same_key_and_other_weights_another(tmp_path):
    cache = tmp_path / "hashes.json"
    a, b = tmp_path / "a" / "model", tmp_path / "b"
    shutil.copytree(STORIES, a)
    shutil.copytree(STORIES, b)
    key_a = fingerprint.folder_key(a, cache)
    assert key_a == fingerprint.folder_key(b, cache)
    assert set(key_a["model weights"]) == {"model.safetensors"}
    assert set(key_a["model config"]) == {"config.json"}
    assert set(key_a["tokenizer"]) == {"tokenizer.json", "tokenizer_config.json"}

    data = bytearray((b / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    (b / "model.safetensors").write_bytes(bytes(data))
    (b / "tokenizer.json").write_text("{}")
    assert fingerprint.differences(key_a, fingerprint.folder_key(b, cache)) == [
        "model weights (model.safetensors differs)",
        "tokenizer (tokenizer.json differs)",
    ]


def test_digests_are_cached_by_stamp_and_an_in_place_rewrite_is_seen(tmp_path):
    cache = tmp_path / "hashes.json"
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"A" * 1000)
    _old(weights)
    first = fingerprint.file_digests([weights], cache)["model.safetensors"]
    entry = json.loads(cache.read_text())[os.path.realpath(weights)]
    assert entry["sha256"] == first

    # the cache is what answers while the file is unchanged (a 100 GB model is read once)
    entry["sha256"] = "f" * 64
    cache.write_text(json.dumps({os.path.realpath(weights): entry}))
    assert fingerprint.file_digests([weights], cache)["model.safetensors"] == "f" * 64

    # same size, mtime set back: the ctime still tells, and the bytes are read again
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(b"B" * 1000)
    os.utime(weights, ns=(mtime, mtime))
    assert fingerprint.file_digests([weights], cache)["model.safetensors"] not in (first, "f" * 64)


def test_a_file_written_just_now_is_not_cached(tmp_path):
    cache = tmp_path / "hashes.json"
    fresh = tmp_path / "model.safetensors"
    fresh.write_bytes(b"x")
    fingerprint.file_digests([fresh], cache)
    assert not cache.exists()  # a coarse clock could hide a second write in the same tick


def test_an_unwritable_cache_costs_only_the_rehash(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 10)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    digests = fingerprint.file_digests([weights], blocker / "hashes.json")
    assert len(digests["model.safetensors"]) == 64


def test_safetensors_win_over_pickles_and_subfolders_are_ignored(tmp_path):
    for name in ("model.safetensors", "pytorch_model.bin", "modeling_x.py", "README.md"):
        (tmp_path / name).write_text(name)
    (tmp_path / "original").mkdir()
    (tmp_path / "original" / "consolidated.pth").write_text("big")
    files = fingerprint.model_files(tmp_path)
    assert [p.name for p in files["model weights"]] == ["model.safetensors"]
    assert [p.name for p in files["model config"]] == ["modeling_x.py"]
    (tmp_path / "model.safetensors").unlink()
    assert [p.name for p in fingerprint.model_files(tmp_path)["model weights"]] == [
        "pytorch_model.bin"
    ]


def test_tensors_in_memory_differ_by_value_dtype_and_shape():
    w = torch.arange(6, dtype=torch.float32)
    key = fingerprint.tensors_key({"w": w})
    assert key == fingerprint.tensors_key({"w": w.clone()})
    for other in (w + 1, w.to(torch.float64), w.view(2, 3), w.to(torch.bfloat16)):
        assert fingerprint.tensors_key({"w": other}) != key


def test_differences_name_settings_with_old_and_new_values():
    old = {"settings": {"calibration": {"batch_size": 2, "max_length": 64}}, "versions": {"a": "1"}}
    new = {"settings": {"calibration": {"batch_size": 4, "max_length": 64}}, "versions": {"a": "1"}}
    assert fingerprint.differences(old, new) == ["settings (calibration.batch_size 2, now 4)"]
    assert fingerprint.differences(old, old) == []
    # stored keys are JSON: a tuple read back as a list is no difference
    assert fingerprint.differences({"p": {"x": [1, 2]}}, {"p": {"x": (1, 2)}}) == []
    assert fingerprint.differences({}, {"plan": {"bits": 3}}) == ["plan"]


def test_settings_include_what_to_dict_leaves_out():
    settings = fingerprint.config_settings(RTN(wbits=3, exclude_layer_names=["lm_head", "x"]))
    assert settings["method"] == "rtn" and settings["wbits"] == 3
    assert "exclude_layer_names" not in RTN(wbits=3).to_dict()
    assert settings["exclude_layer_names"] == ["lm_head", "x"]
