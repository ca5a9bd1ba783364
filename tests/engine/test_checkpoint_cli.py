"""Resume as a user meets it: `onecomp quantize` SIGKILLed after block 2, then run again.

The run is a real subprocess killed by a real SIGKILL as soon as its
checkpoint manifest reports two finished blocks (nothing in the engine knows
it is being tested). What a rerun may do is then decided by content only:
other weights in the same folder are refused in one line naming them, the
same weights in another folder resume and give the bytes an uninterrupted
run gives, and a second run on a busy --out stops at once naming the first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onecomp_core.cli import main

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO.parent / "shared" / "assets"
STORIES = ASSETS / "stories260K"
CALIB = ASSETS / "text" / "tinystories-valid-excerpt.txt"
BLOCKS = 5
#: a run with calibration statistics, so each block takes measurable time
RUN = ["--method", "gptq", "--calibration", str(CALIB), "--num-samples", "4"]
RUN += ["--max-length", "64", "--batch-size", "2", "--quiet"]


def _env(cache: Path) -> dict[str, str]:
    """This checkout first on the path, one thread, the hash cache in the test's folder."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(cache)}


def _error_line(capsys) -> str:
    """The one error line of a failed run (other stderr lines are progress bars)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    return err.strip().splitlines()[-1]


def _finished(checkpoint: Path) -> int:
    try:
        return json.loads((checkpoint / "manifest.json").read_text())["finished_blocks"]
    except (OSError, ValueError, KeyError):
        return 0


def _kill_after(blocks: int, args: list[str], checkpoint: Path, env: dict[str, str]) -> int:
    """Start `onecomp quantize ARGS`, SIGKILL it once ``blocks`` blocks are checkpointed."""
    cmd = [sys.executable, "-m", "onecomp_core.cli", "quantize", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if _finished(checkpoint) >= blocks:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return _finished(checkpoint)
        time.sleep(0.002)
    proc.kill()
    err = proc.communicate()[1].decode()
    pytest.fail(f"the run ended (rc {proc.returncode}) before block {blocks}: {err[-500:]}")


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A model copy and a checkpoint of a run on it SIGKILLed after block 2 (kept pristine)."""
    root = tmp_path_factory.mktemp("killed")
    shutil.copytree(STORIES, root / "model")
    args = [str(root / "model"), *RUN, "--out", str(root / "q")]
    args += ["--checkpoint-dir", str(root / "ckpt")]
    done = _kill_after(2, args, root / "ckpt", _env(root / "cache"))
    assert 2 <= done < BLOCKS
    assert not (root / "q").exists()
    return root


def test_weights_changed_in_place_are_never_resumed(killed, tmp_path, capsys, monkeypatch):
    # the killed run's own folder and hash cache: only the content of the file changes
    monkeypatch.setenv("XDG_CACHE_HOME", str(killed / "cache"))
    model, ckpt = killed / "model", tmp_path / "ckpt"
    shutil.copytree(killed / "ckpt", ckpt)
    weights = model / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.layers.4.mlp.up_proj.weight"] *= 1.01  # a block the killed run never reached
    save_file(tensors, str(weights), metadata={"format": "pt"})
    finished = _finished(ckpt)

    capsys.readouterr()
    args = ["quantize", str(model), *RUN, "--out", str(tmp_path / "q")]
    assert main([*args, "--checkpoint-dir", str(ckpt)]) == 2
    err = _error_line(capsys)
    assert f"checkpoint in {ckpt} was made with other model weights" in err
    assert "model.safetensors differs" in err and "--restart" in err
    # nothing was mixed, nothing was written, and the checkpoint is untouched
    assert _finished(ckpt) == finished and not (tmp_path / "q").exists()
    assert not (ckpt / ".lock").exists() and not (tmp_path / "q.lock").exists()

    # --restart starts over on the new weights
    assert main([*args, "--checkpoint-dir", str(ckpt), "--restart"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert (tmp_path / "q" / "model.safetensors").is_file()


def test_the_same_weights_at_another_path_resume_bit_identically(
    killed, tmp_path, capsys, monkeypatch, one_thread
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(killed / "ckpt", ckpt)
    moved = tmp_path / "elsewhere" / "stories"
    shutil.copytree(STORIES, moved)
    finished = _finished(ckpt)

    capsys.readouterr()
    args = ["quantize", str(moved), *RUN, "--out", str(tmp_path / "resumed")]
    assert main([*args, "--checkpoint-dir", str(ckpt)]) == 0
    err = capsys.readouterr().err
    assert f"onecomp: resuming after block {finished} of {BLOCKS}" in err
    # what the SIGKILL left behind is gone, and no lock stays after a normal exit
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "lock" in p.name]

    assert main(["quantize", str(STORIES), *RUN, "--out", str(tmp_path / "whole")]) == 0
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_another_batch_size_is_named_not_a_zip_error(killed, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(killed / "ckpt", ckpt)
    capsys.readouterr()
    args = ["quantize", str(STORIES), *RUN, "--batch-size", "4", "--out", str(tmp_path / "q")]
    assert main([*args, "--checkpoint-dir", str(ckpt)]) == 2
    assert "was made with other settings (calibration.batch_size 2, now 4)" in _error_line(capsys)


def test_a_second_run_on_the_same_out_stops_at_once_naming_the_first(tmp_path, capsys):
    out = tmp_path / "q"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onecomp_core.cli",
            "quantize",
            str(STORIES),
            *RUN,
            "--out",
            str(out),
        ],
        env=_env(tmp_path / "cache"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = tmp_path / "q.lock"
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first run ended before taking its lock"
            time.sleep(0.01)
        capsys.readouterr()
        started = time.monotonic()
        assert main(["quantize", str(STORIES), *RUN, "--out", str(out), "--overwrite"]) == 2
        elapsed = time.monotonic() - started
        err = _error_line(capsys)
        assert f"output {out} is in use by another onecomp run (pid {first.pid}, started" in err
        assert elapsed < 5  # before the model is loaded
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
