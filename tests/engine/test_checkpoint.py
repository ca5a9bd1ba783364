"""Checkpoints through the seed API: what resumes, what is refused and how it says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.engine.checkpoint import BlockCheckpoint, CheckpointMismatch
from onecomp_core.seed_api import Runner
from onecomp_core.testing import HessianRTN, HessianRTNPlugin, registered_plugin

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"
CALIB = STORIES.parent / "text" / "wikitext2-valid.tokens.txt"


class Crash(Exception):
    pass


def _crash_after(index: int):
    def callback(view):
        if view.index == index:
            raise Crash

    return callback


def _runner(ckpt: Path, model: Path = STORIES, **kwargs) -> Runner:
    calibration = CalibrationConfig(
        dataset=str(CALIB), max_length=64, num_calibration_samples=4, batch_size=2
    )
    model_config = ModelConfig(path=model, dtype="float32", device="cpu")
    return Runner(
        model_config,
        HessianRTN(wbits=3),
        calibration,
        checkpoint_dir=ckpt,
        show_progress=False,
        **kwargs,
    )


@pytest.fixture
def crashed(tmp_path, monkeypatch) -> Path:
    """A checkpoint folder of a run that crashed after block 2 (3 blocks done)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        with pytest.raises(Crash):
            _runner(ckpt, block_callback=_crash_after(2)).run()
    assert json.loads((ckpt / "manifest.json").read_text())["finished_blocks"] == 3
    assert not (ckpt / ".lock").exists()
    return ckpt


def test_a_resume_says_so_in_one_line(crashed, capsys):
    capsys.readouterr()
    done = []
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        _runner(crashed, block_callback=lambda view: done.append(view.index)).run()
    err = capsys.readouterr().err
    assert f"onecomp: resuming after block 3 of 5 ({crashed})\n" in err
    assert done == [3, 4]


def test_restart_discards_the_progress(crashed, capsys):
    done = []
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        runner = _runner(crashed, restart=True, block_callback=lambda view: done.append(view.index))
        runner.run()
    assert done == [0, 1, 2, 3, 4]
    assert "resuming" not in capsys.readouterr().err


def test_restart_never_empties_a_folder_that_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="refusing to empty .*'thesis.tex'"):
        BlockCheckpoint(folder).discard()
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_broken_manifest_is_named(crashed):
    (crashed / "manifest.json").write_text('{"key": \n')
    with pytest.raises(CheckpointMismatch) as err:
        BlockCheckpoint(crashed).finished_blocks()
    assert f"checkpoint manifest {crashed / 'manifest.json'} is unreadable" in str(err.value)
    assert "restart" in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_checkpoint_file_is_named(crashed):
    inputs = crashed / "inputs_0003.safetensors"
    inputs.write_bytes(inputs.read_bytes()[:100])
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        with pytest.raises(CheckpointMismatch, match=f"checkpoint file {inputs} is damaged"):
            _runner(crashed).run()


def test_a_checkpoint_of_an_older_onecomp_is_refused(crashed):
    manifest = json.loads((crashed / "manifest.json").read_text())
    del manifest["key"]
    manifest["fingerprint"] = "0" * 64
    (crashed / "manifest.json").write_text(json.dumps(manifest))
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        with pytest.raises(CheckpointMismatch, match="made by an older onecomp"):
            _runner(crashed).run()


def test_other_calibration_text_is_refused(crashed, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(CALIB.read_text()[1000:])
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        runner = _runner(crashed)
        runner.calibration_config.dataset = str(other)
        with pytest.raises(CheckpointMismatch, match="made with other calibration windows;"):
            runner.run()


def test_a_model_given_in_memory_is_keyed_by_its_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        first = _runner(ckpt, block_callback=_crash_after(0))
        first.model = ModelConfig(path=STORIES, dtype="float32").load_model()
        first.tokenizer = ModelConfig(path=STORIES).load_tokenizer()
        with pytest.raises(Crash):
            first.run()
        # the crashed run changed its model in place (block 0 is quantized): a new copy differs
        other = _runner(ckpt)
        other.model = ModelConfig(path=STORIES, dtype="float32").load_model()
        other.tokenizer = first.tokenizer
        weight = other.model.get_submodule("model.layers.4.mlp.up_proj").weight
        weight.data[0, 0] += 1
        with pytest.raises(CheckpointMismatch) as err:
            other.run()
    assert "other model weights (model.layers.4.mlp.up_proj.weight differs)" in str(err.value)


def test_the_same_model_copied_elsewhere_resumes(crashed, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(STORIES, copy)
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        _runner(crashed, model=copy).run()
    assert "resuming after block 3 of 5" in capsys.readouterr().err
