"""The ``onecomp`` command as users run it: quantize, eval, inspect, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from onecomp_core.cli import main
from onecomp_core.contract import Method, hookimpl
from onecomp_core.data.calibration import STRATEGIES
from onecomp_core.testing import registered_plugin

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = str(ASSETS / "stories260K")
TS = str(ASSETS / "text" / "tinystories-valid-excerpt.txt")
FP32_TS = 5.538


def _quantize(out: Path, *settings: str) -> None:
    args = ["quantize", STORIES, "--method", "rtn", "--out", str(out), "--quiet"]
    for s in settings:
        args += ["--set", s]
    assert main(args) == 0


def _ppl(target: Path | str, capsys) -> float:
    capsys.readouterr()
    assert main(["eval", str(target), "--ppl", TS, "--json"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    return json.loads(line)["ppl"]


@pytest.fixture(scope="module")
def rtn4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "rtn4"
    _quantize(out, "wbits=4")
    return out


def test_original_model_reproduces_the_reference_perplexity(capsys):
    assert _ppl(STORIES, capsys) == pytest.approx(FP32_TS, abs=5e-4)


def test_rtn_8bit_is_within_half_a_percent_of_fp32(tmp_path, capsys):
    _quantize(tmp_path / "q", "wbits=8")
    assert _ppl(tmp_path / "q", capsys) <= FP32_TS * 1.005


def test_rtn_4bit_symmetric_lies_between_the_two_usual_grids(rtn4, capsys):
    assert 6.30 <= _ppl(rtn4, capsys) <= 6.60


def test_rtn_4bit_asymmetric(tmp_path, capsys):
    _quantize(tmp_path / "q", "wbits=4", "sym=false")
    assert _ppl(tmp_path / "q", capsys) <= 6.25


def test_inspect_reports_bits_and_size(rtn4, capsys):
    capsys.readouterr()
    assert main(["inspect", str(rtn4), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    down = next(r for r in report["layers"] if r["layer"] == "model.layers.0.mlp.down_proj")
    assert down["effective_bits"] == pytest.approx(4 + 20 / 172, abs=1e-5)
    # qweight 22 words × 64 + qzeros 8 words + fp16 scales 64 + int32 g_idx 172, in bytes
    assert down["bytes"] == 22 * 64 * 4 + 8 * 4 + 64 * 2 + 172 * 4
    assert down["bits_on_disk"] == pytest.approx(8 * down["bytes"] / (64 * 172), abs=1e-4)
    assert report["compression_ratio"] > 1.5


def _error(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_missing_model_path(tmp_path, capsys):
    err = _error(
        ["quantize", str(tmp_path / "nope"), "--method", "rtn", "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "model folder not found" in err and "nope" in err
    assert not (tmp_path / "o").exists()


def test_unknown_method(tmp_path, capsys):
    err = _error(["quantize", STORIES, "--method", "nosuch", "--out", str(tmp_path / "o")], capsys)
    assert "unknown quantization method 'nosuch'" in err and "rtn" in err


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("wbits=four", "wbits='four': expected an integer from 2 to 8"),
        ("wbits", "expected KEY=VALUE"),
        ("colour=blue", "unknown parameter(s) ['colour']"),
    ],
)
def test_bad_set_values(tmp_path, capsys, setting, expected):
    err = _error(
        ["quantize", STORIES, "--method", "rtn", "--set", setting, "--out", str(tmp_path / "o")],
        capsys,
    )
    assert expected in err


def test_empty_calibration_file(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    from onecomp_core.testing import HessianRTNPlugin, registered_plugin

    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        err = _error(
            [
                "quantize",
                STORIES,
                "--method",
                "hessian_rtn",
                "--calibration",
                str(empty),
                "--out",
                str(tmp_path / "o"),
            ],
            capsys,
        )
    assert "empty" in err
    assert not (tmp_path / "o").exists()


def test_eval_text_shorter_than_one_window(rtn4, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time there was a cat.")
    err = _error(["eval", str(rtn4), "--ppl", str(short)], capsys)
    assert "shorter than one window" in err


def test_output_folder_that_exists_is_refused(rtn4, capsys):
    err = _error(["quantize", STORIES, "--method", "rtn", "--out", str(rtn4)], capsys)
    assert "already exists" in err and "--overwrite" in err


def test_truncated_weights(rtn4, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(rtn4, broken)
    weights = sorted(broken.glob("*.safetensors"))[0]
    weights.write_bytes(weights.read_bytes()[:1000])
    err = _error(["eval", str(broken), "--ppl", TS], capsys)
    assert "corrupt or truncated" in err


def test_config_without_quantization_config(tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    err = _error(["inspect", str(folder)], capsys)
    assert "no onecomp quantization_config" in err


def test_qep_settings_reach_the_runner_and_the_saved_config(tmp_path, capsys):
    from onecomp_core.testing import HessianRTNPlugin, registered_plugin

    out = tmp_path / "q"
    calibration = str(ASSETS / "text" / "wikitext2-valid.tokens.txt")
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        args = [
            "quantize",
            STORIES,
            "--method",
            "hessian_rtn",
            "--calibration",
            calibration,
            "--num-samples",
            "4",
            "--max-length",
            "64",
            "--qep",
            "--set-qep",
            "perccorr=0.25",
            "--out",
            str(out),
            "--quiet",
        ]
        assert main(args) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["qep"]["perccorr"] == 0.25
    assert qc["qep"]["exclude_layer_keywords"] == ["mlp.down_proj"]
    # the default per-block checkpoint is gone once the model is saved
    assert not (tmp_path / "q.checkpoint").exists()


def test_set_qep_needs_qep(tmp_path, capsys):
    err = _error(
        [
            "quantize",
            STORIES,
            "--method",
            "rtn",
            "--set-qep",
            "perccorr=0.3",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "--set-qep needs --qep" in err


def test_bits_sets_the_method_bit_width(tmp_path):
    args = ["quantize", STORIES, "--method", "rtn", "--bits", "3", "--out", str(tmp_path / "q")]
    assert main([*args, "--quiet"]) == 0
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["bits"] == 3
    assert {row["bits"] for row in qc["layers"].values()} == {3}


class NoBits(Method):
    """A method that declares no bit width."""

    method = "no_bits"


class NoBitsPlugin:
    @hookimpl
    def onecomp_register(self, register) -> None:
        register.add_method(NoBits)


def test_bits_for_a_method_without_a_bit_width(tmp_path, capsys):
    with registered_plugin(NoBitsPlugin(), name="no-bits"):
        err = _error(
            [
                "quantize",
                STORIES,
                "--method",
                "no_bits",
                "--bits",
                "2",
                "--out",
                str(tmp_path / "o"),
            ],
            capsys,
        )
    assert "--bits: method 'no_bits' has no bit-width parameter; use --set" in err


def test_bits_out_of_range(tmp_path, capsys):
    err = _error(
        ["quantize", STORIES, "--method", "rtn", "--bits", "9", "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "wbits=9: expected an integer from 2 to 8" in err


def test_strategy_choices_are_the_calibration_strategies(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", STORIES, "--method", "rtn", "--strategy", "drop_tail", "--out", "o"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "invalid choice" in err and "drop_tail" in err
    assert all(strategy in err for strategy in STRATEGIES)


def test_qep_is_refused_for_a_method_without_statistics(tmp_path, capsys):
    err = _error(
        ["quantize", STORIES, "--method", "rtn", "--qep", "--out", str(tmp_path / "o")], capsys
    )
    assert "run it without --qep" in err


# -- export ---------------------------------------------------------------------------------
def test_export_to_the_hf_format_writes_the_same_model(saved, tmp_path, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "copy"
    assert main(["export", str(saved), "--format", "hf", str(out)]) == 0
    assert f"exported {saved} as hf to {out}" in capsys.readouterr().err
    first, second = (load_file(str(p / "model.safetensors")) for p in (saved, out))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (out / "config.json").read_text() == (saved / "config.json").read_text()


def test_export_through_a_plugin_format(saved, tmp_path):
    import importlib.metadata as md

    import numpy as np

    if not md.entry_points(group="onecomp", name="ternary"):
        pytest.skip("the example plugin (format npz) is not installed")
    assert main(["export", str(saved), "--format", "npz", str(tmp_path / "npz")]) == 0
    archive = np.load(tmp_path / "npz" / "model.npz")
    rows = json.loads(str(archive["__rows__"]))
    config = json.loads((saved / "config.json").read_text())
    assert rows == config["quantization_config"]["layers"]
    assert "model.layers.0.mlp.down_proj.qweight" in archive.files


def test_export_to_an_unknown_format_names_the_installed_ones(saved, tmp_path, capsys):
    err = _error(["export", str(saved), "--format", "gguf9", str(tmp_path / "o")], capsys)
    assert "unknown format 'gguf9'" in err and "hf" in err
    assert not (tmp_path / "o").exists()


def test_export_refuses_an_existing_output_unless_overwrite(saved, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    err = _error(["export", str(saved), "--format", "hf", str(out)], capsys)
    assert "already exists" in err and "--overwrite" in err
    assert main(["export", str(saved), "--format", "hf", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file()


def test_export_of_a_folder_not_saved_by_onecomp(tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    err = _error(["export", str(folder), "--format", "hf", str(tmp_path / "o")], capsys)
    assert "no onecomp quantization_config" in err
