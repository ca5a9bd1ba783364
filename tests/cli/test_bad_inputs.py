"""The table of bad inputs and faults: each one line on stderr, exit 2, no traceback, no leftovers.

Every row runs the real ``onecomp`` command (``main([...])`` in this process,
stderr captured; a subprocess for the pipe and environment cases) and
asserts the four promises of the README: exit code 2, exactly one line on
stderr (no usage block, no progress bar), no "Traceback", and nothing new on
disk (no output folder, no hidden partial folder, no checkpoint). The checks
fire before any long work, so the table runs in seconds. Rows marked
``problem N`` are the numbered problems of issue 13 and fail on the code
before it (3137a68 / 466b3e4).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from onecomp_core.cli import main

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = ASSETS / "stories260K"
TEXT = ASSETS / "text" / "tinystories-valid-excerpt.txt"
DOWN = "model.layers.0.mlp.down_proj"
ROOT = os.geteuid() == 0


# -- fixtures: a model folder and a saved quantized folder, made once --------------------------
@dataclass
class Place:
    """What a row may use: its own folder, the shared model and a saved quantized folder."""

    tmp: Path
    saved_folder: Path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, self.tmp / name))

    def quantized(self, change: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
        """A copy of the saved folder, its tensors changed by ``change``."""
        folder = self.copy(self.saved_folder, "q")
        if change is not None:
            weights = folder / "model.safetensors"
            tensors = load_file(str(weights))
            change(tensors)
            save_file(tensors, str(weights), metadata={"format": "pt"})
        return folder

    def table(self, change: Callable[[dict], None]) -> Path:
        """A copy of the saved folder with its per-layer table changed by ``change``."""
        folder = self.copy(self.saved_folder, "q")
        config = json.loads((folder / "config.json").read_text())
        change(config["quantization_config"]["layers"])
        (folder / "config.json").write_text(json.dumps(config))
        return folder


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def quantize(*args: str, out: str | Path, method: str = "rtn") -> list[str]:
    return ["quantize", str(STORIES), "--method", method, *args, "--out", str(out), "--quiet"]


# -- the table: id → (argv built in a Place, words the one line must hold) -------------------
Row = Callable[[Place], tuple[list[str], list[str]]]


def _exists(p: Place):
    (p.tmp / "out").mkdir()
    (p.tmp / "out" / "keep.txt").write_text("mine")
    return quantize(out=p.tmp / "out"), ["already exists", "--overwrite"]


def _under_file(p: Place):
    (p.tmp / "afile").write_text("x")
    return quantize(out=p.tmp / "afile" / "out"), ["afile", "is a file, not a folder"]


def _checkpoint_under_file(p: Place):
    (p.tmp / "afile").write_text("x")
    args = ["--checkpoint-dir", str(p.tmp / "afile" / "ck")]
    return quantize(*args, out=p.tmp / "o"), ["--checkpoint-dir", "is a file"]


def _holds_cwd(p: Place):
    work = p.tmp / "run" / "here"
    work.mkdir(parents=True)
    os.chdir(work)
    return quantize("--overwrite", out=p.tmp / "run"), ["holds the current folder"]


def _truncated_model(p: Place):
    model = p.copy(STORIES, "model")
    truncate(model / "model.safetensors")
    args = ["quantize", str(model), "--method", "rtn", "--out", str(p.tmp / "o")]
    return args, ["model.safetensors", "corrupt or truncated"]


def _pickle_model(p: Place):
    model = p.copy(STORIES, "model")
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    args = ["quantize", str(model), "--method", "rtn", "--out", str(p.tmp / "o")]
    return args, ["pytorch_model.bin", "pickle", "safetensors"]


def _broken_model_config(p: Place):
    model = p.copy(STORIES, "model")
    (model / "config.json").write_text('{"model_type": ')
    args = ["quantize", str(model), "--method", "rtn", "--out", str(p.tmp / "o")]
    return args, ["config.json", "not a valid JSON"]


def _rotate_unsupported_model(p: Place):
    model = p.copy(STORIES, "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    args = ["quantize", str(model), "--method", "rtn", "--rotate", "hadamard"]
    return [*args, "--out", str(p.tmp / "o")], ["--rotate", "'gemma'", "llama"]


def _no_space(p: Place):
    return quantize(out=p.tmp / "o"), ["not enough free disk space", "needed"]


def _eval(folder: Path, *more: str) -> list[str]:
    return ["eval", str(folder), "--ppl", str(TEXT), *more]


def _set(tensors, key, value):
    tensors[key] = value


def _g_idx_out_of_range(t):
    t[f"{DOWN}.g_idx"] = t[f"{DOWN}.g_idx"] + 1


def _qweight_float(t):
    t[f"{DOWN}.qweight"] = t[f"{DOWN}.qweight"].float()


def _scales_nan(t):
    t[f"{DOWN}.scales"][0, 0] = float("nan")


def _scales_inf(t):
    t["model.norm.weight"][0] = float("inf")


def _padding_set(t):
    # 172 inputs x 4 bits = 21.5 words: the top half of the last word is padding
    t[f"{DOWN}.qweight"][-1] |= 1 << 20


def _missing_tensor(t):
    del t[f"{DOWN}.scales"]


def _bits_8(rows):
    rows[DOWN]["bits"] = 8


def _bits_40(rows):
    rows[DOWN]["bits"] = 40


def _row_without_bits(rows):
    del rows[DOWN]["bits"]


def _checkpoint_run(p: Place) -> Path:
    ck = p.tmp / "ck"
    assert main(quantize("--checkpoint-dir", str(ck), out=p.tmp / "first")) == 0
    shutil.rmtree(p.tmp / "first")
    return ck


def _truncated_checkpoint(p: Place):
    ck = _checkpoint_run(p)
    truncate(ck / "block_0000" / "results.safetensors")
    args = quantize("--checkpoint-dir", str(ck), out=p.tmp / "o")
    return args, [str(ck / "block_0000" / "results.safetensors"), "truncated"]


def _broken_manifest(p: Place):
    ck = _checkpoint_run(p)
    (ck / "manifest.json").write_text('{"finished_blocks": 5,\n')
    return quantize("--checkpoint-dir", str(ck), out=p.tmp / "o"), [str(ck / "manifest.json")]


def _truncated_inspect(p: Place):
    folder = p.quantized()
    truncate(folder / "model.safetensors")
    return ["inspect", str(folder)], ["model.safetensors", "truncated"]


def _pickle_saved(p: Place):
    folder = p.quantized()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return _eval(folder), ["pytorch_model.bin", "pickle"]


ROWS: dict[str, Row] = {
    # -- outputs (problem 3 and 7: before any work, naming the option) --
    "out exists (README one-liner rerun)": _exists,
    "out is . (problem 7)": lambda p: (quantize(out="."), ["--out .", "names no new folder"]),
    "out is .. with overwrite": lambda p: (
        quantize("--overwrite", out=".."),
        ["names no new folder"],
    ),
    "out is / with overwrite": lambda p: (
        quantize("--overwrite", out="/"),
        ["names no new folder"],
    ),
    "out under a regular file": _under_file,
    "out in /proc (problem 3)": lambda p: (
        quantize(out="/proc/onecomp-test"),
        ["--out /proc/onecomp-test", "cannot create a folder in /proc"],
    ),
    "out in /sys (problem 4)": lambda p: (
        quantize(out="/sys/onecomp-test/o"),
        ["--out /sys/onecomp-test/o", "cannot create a folder"],
    ),
    "out in /proc without checkpoint (problem 3)": lambda p: (
        quantize("--no-checkpoint", out="/proc/onecomp-test"),
        ["cannot create a folder in /proc"],
    ),
    "checkpoint under a regular file": _checkpoint_under_file,
    "checkpoint in /proc": lambda p: (
        quantize("--checkpoint-dir", "/proc/onecomp-ck", out=p.tmp / "o"),
        ["--checkpoint-dir /proc/onecomp-ck", "cannot create a folder"],
    ),
    "checkpoint equal to out": lambda p: (
        quantize("--checkpoint-dir", str(p.tmp / "o"), out=p.tmp / "o"),
        ["is the output folder"],
    ),
    "overwrite of the folder holding the cwd": _holds_cwd,
    "no free disk space": _no_space,
    # -- the model's files (problem 4) --
    "missing model folder": lambda p: (
        ["quantize", str(p.tmp / "nope"), "--method", "rtn", "--out", str(p.tmp / "o")],
        ["model folder not found"],
    ),
    "truncated model.safetensors (problem 4)": _truncated_model,
    "pickle pytorch_model.bin (problem 4)": _pickle_model,
    "broken model config.json": _broken_model_config,
    # -- parameters (problems 4 and 5) --
    "unknown method": lambda p: (quantize(out=p.tmp / "o", method="nosuch"), ["nosuch"]),
    "--set value of the wrong kind": lambda p: (
        quantize("--set", "wbits=four", out=p.tmp / "o"),
        ["wbits='four'", "an integer from 2 to 8"],
    ),
    "--set without =": lambda p: (quantize("--set", "wbits", out=p.tmp / "o"), ["KEY=VALUE"]),
    "--set unknown name": lambda p: (
        quantize("--set", "colour=blue", out=p.tmp / "o"),
        ["unknown parameter(s) ['colour']"],
    ),
    "--set results=5 (problem 4)": lambda p: (
        quantize("--set", "results=5", out=p.tmp / "o", method="gptq"),
        ["unknown parameter(s) ['results']"],
    ),
    "--set hessian_dtype=bogus (problem 4)": lambda p: (
        quantize("--set", "hessian_dtype=bogus", out=p.tmp / "o", method="gptq"),
        ["unknown parameter(s) ['hessian_dtype']"],
    ),
    "--set name=x (internal field)": lambda p: (
        quantize("--set", "name=x", out=p.tmp / "o", method="gptq"),
        ["unknown parameter(s) ['name']"],
    ),
    "--set target_layer_types (internal field)": lambda p: (
        quantize("--set", "target_layer_types=[]", out=p.tmp / "o"),
        ["unknown parameter(s) ['target_layer_types']"],
    ),
    "gptq wbits=9": lambda p: (
        quantize("--set", "wbits=9", out=p.tmp / "o", method="gptq"),
        ["wbits=9", "from 1 to 8"],
    ),
    "--rotate with an unknown kind": lambda p: (
        quantize("--rotate", "spin", out=p.tmp / "o"),
        ["--rotate 'spin'", "hadamard"],
    ),
    "--rotate on an architecture it cannot fold": _rotate_unsupported_model,
    "rtn --bits 9": lambda p: (quantize("--bits", "9", out=p.tmp / "o"), ["wbits=9"]),
    "dbf target_bits=40 (problem 5)": lambda p: (
        quantize("--set", "target_bits=40", out=p.tmp / "o", method="dbf"),
        ["target_bits=40", "<= 16"],
    ),
    "dbf --bits 40 (problem 5)": lambda p: (
        quantize("--bits", "40", out=p.tmp / "o", method="dbf"),
        ["target_bits=40"],
    ),
    "dbf mlp_target_bits=17": lambda p: (
        quantize("--set", "mlp_target_bits=17", out=p.tmp / "o", method="dbf"),
        ["mlp_target_bits=17", "from 1 to 16"],
    ),
    "dbf module_target_bits of 40": lambda p: (
        quantize("--set", 'module_target_bits={"x": 40}', out=p.tmp / "o", method="dbf"),
        ["module_target_bits['x']=40"],
    ),
    "autobit target_bit=40": lambda p: (
        quantize("--set", "target_bit=40", out=p.tmp / "o", method="autobit"),
        ["target_bit=40"],
    ),
    "--max-length beyond the context (problem 5)": lambda p: (
        quantize("--max-length", "100000", out=p.tmp / "o", method="gptq"),
        ["--max-length 100000", "512 positions", "--allow-longer-context"],
    ),
    "--max-length 1": lambda p: (
        quantize("--max-length", "1", out=p.tmp / "o", method="gptq"),
        ["max_length=1"],
    ),
    "--num-samples 0": lambda p: (
        quantize("--num-samples", "0", out=p.tmp / "o"),
        ["num_calibration_samples=0"],
    ),
    "--batch-size 0": lambda p: (quantize("--batch-size", "0", out=p.tmp / "o"), ["batch_size=0"]),
    "--num-samples not a number": lambda p: (
        quantize("--num-samples", "x", out=p.tmp / "o"),
        ["--num-samples", "invalid int value"],
    ),
    "--strategy not a strategy": lambda p: (
        quantize("--strategy", "drop_tail", out=p.tmp / "o"),
        ["invalid choice", "drop_tail"],
    ),
    "calibration file missing": lambda p: (
        quantize("--calibration", str(p.tmp / "none.txt"), out=p.tmp / "o"),
        ["none.txt"],
    ),
    "--set-qep without --qep": lambda p: (
        quantize("--set-qep", "perccorr=0.3", out=p.tmp / "o"),
        ["--set-qep needs --qep"],
    ),
    "--qep with a method without statistics": lambda p: (
        quantize("--qep", out=p.tmp / "o"),
        ["without --qep"],
    ),
    "--set-qep out of range": lambda p: (
        quantize("--qep", "--set-qep", "perccorr=2", out=p.tmp / "o", method="gptq"),
        ["perccorr=2"],
    ),
    "--dtype unknown": lambda p: (quantize("--dtype", "float8", out=p.tmp / "o"), ["float8"]),
    "--device unknown": lambda p: (quantize("--device", "tpu", out=p.tmp / "o"), ["tpu"]),
    # -- checkpoints (problems 4 and 7) --
    "truncated checkpoint file (problem 4)": _truncated_checkpoint,
    "broken checkpoint manifest (problem 7)": _broken_manifest,
    # -- loading a saved folder: strict load (problem 2) --
    "qweight stored as float32 (problem 2)": lambda p: (
        _eval(p.quantized(_qweight_float)),
        [f"{DOWN}.qweight", "torch.float32", "torch.int32"],
    ),
    "g_idx out of range (problem 2)": lambda p: (
        _eval(p.quantized(_g_idx_out_of_range)),
        [f"{DOWN}.g_idx", "expected 0 to 0"],
    ),
    "NaN in scales": lambda p: (_eval(p.quantized(_scales_nan)), [f"{DOWN}.scales", "NaN"]),
    "Inf in a norm": lambda p: (_eval(p.quantized(_scales_inf)), ["model.norm.weight", "Inf"]),
    "codes wider than the table's bits": lambda p: (
        _eval(p.quantized(_padding_set)),
        [f"{DOWN}.qweight", "wider than 4 bits"],
    ),
    "missing tensor": lambda p: (
        _eval(p.quantized(_missing_tensor)),
        ["missing", f"{DOWN}.scales"],
    ),
    "bits in the table differ from the tensors": lambda p: (
        _eval(p.table(_bits_8)),
        ["wrong shape", f"{DOWN}.qweight"],
    ),
    "bits=40 in the table": lambda p: (_eval(p.table(_bits_40)), [DOWN, "bits=40"]),
    "a table row without bits": lambda p: (
        _eval(p.table(_row_without_bits)),
        [DOWN, "missing key 'bits'"],
    ),
    "truncated saved weights": lambda p: (
        _eval(truncate(p.quantized() / "model.safetensors").parent),
        ["model.safetensors", "truncated"],
    ),
    "pickle weights in a saved folder (problem 4)": _pickle_saved,
    "eval --seqlen beyond the context (problem 5)": lambda p: (
        _eval(STORIES, "--seqlen", "4096"),
        ["--seqlen 4096", "512 positions"],
    ),
    "eval --seqlen beyond a saved folder's context": lambda p: (
        _eval(p.saved_folder, "--seqlen", "4096"),
        ["--seqlen 4096"],
    ),
    "eval --seqlen 1": lambda p: (_eval(STORIES, "--seqlen", "1"), ["--seqlen 1"]),
    "eval text missing": lambda p: (
        ["eval", str(STORIES), "--ppl", str(p.tmp / "none.txt")],
        ["none.txt"],
    ),
    # -- inspect and export --
    "inspect a truncated file (problem 4)": _truncated_inspect,
    "inspect pickle weights": lambda p: (
        ["inspect", str(_pickle_saved(p)[0][1])],
        ["pytorch_model.bin", "never unpickles"],
    ),
    "inspect a folder not saved by onecomp": lambda p: (
        ["inspect", str(STORIES)],
        ["no onecomp quantization_config"],
    ),
    "inspect a missing folder": lambda p: (["inspect", str(p.tmp / "nope")], ["does not exist"]),
    "export to /proc": lambda p: (
        ["export", str(p.saved_folder), "--format", "hf", "/proc/onecomp-x"],
        ["cannot create a folder in /proc"],
    ),
    "export onto an existing folder": lambda p: (
        ["export", str(p.saved_folder), "--format", "hf", str(p.saved_folder.parent)],
        ["already exists", "--overwrite"],
    ),
    "export to an unknown format": lambda p: (
        ["export", str(p.saved_folder), "--format", "gguf9", str(p.tmp / "o")],
        ["unknown format 'gguf9'"],
    ),
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(ROWS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case, saved, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ONECOMP_DEBUG", raising=False)
    place = Place(tmp_path, saved)
    argv, expected = ROWS[case](place)
    if case == "no free disk space":
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    before, saved_before = _tree(tmp_path), _tree(saved)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # a resumed run says so first (the one notice allowed before the error line)
    lines = [line for line in err.splitlines() if not line.startswith("onecomp: resuming after")]
    assert len(lines) == 1, err
    assert lines[0].startswith("onecomp"), err
    for words in expected:
        assert words in lines[0], lines[0]
    assert _tree(tmp_path) == before, "left behind: " + str(_tree(tmp_path) - before)
    assert _tree(saved) == saved_before


def test_the_table_holds_at_least_forty_rows():
    assert len(ROWS) >= 40


@pytest.mark.skipif(ROOT, reason="root writes into read-only folders; /proc and /sys rows cover it")
def test_read_only_output_parent(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert main(quantize(out=parent / "o")) == 2
    finally:
        parent.chmod(0o755)
    line = capsys.readouterr().err.strip()
    assert "cannot create a folder in" in line and "\n" not in line
    assert list(parent.iterdir()) == []


# -- the command as a process: pipes, environment, tracebacks on request -----------------------
def onecomp(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ONECOMP_")}
    environ.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "onecomp_core.cli", *args],
        env=environ,
        text=True,
        stderr=subprocess.PIPE,
        **popen,
    )


def test_a_closed_pipe_ends_quietly():
    """``onecomp plugins --json | head -1`` (problem 4): no BrokenPipeError traceback."""
    read, write = os.pipe()
    proc = onecomp("plugins", "--json", stdout=write)
    os.close(write)
    os.close(read)  # the reader is gone before the command writes a byte
    _, err = proc.communicate(timeout=120)
    assert err == ""
    assert proc.returncode == 141


def test_onecomp_debug_shows_the_traceback(tmp_path):
    proc = onecomp(
        *quantize(out="/proc/onecomp-test"), env={"ONECOMP_DEBUG": "1"}, stdout=subprocess.PIPE
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" in err and "PermissionError" in err


def test_onecomp_quiet_hides_every_progress_bar(tmp_path):
    """Problem 9: the README says ONECOMP_QUIET=1 hides progress bars; the CLI obeys it."""
    args = ["quantize", str(STORIES), "--method", "rtn", "--out", str(tmp_path / "o")]
    proc = onecomp(*args, env={"ONECOMP_QUIET": "1"}, stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "blocks" not in err and "Loading weights" not in err and "%|" not in err
    assert out == ""  # no table either
    # stories260K's 172-wide MLP is no GPTQ kernel's shape: the one-line notice, then the summary
    notice, summary = err.strip().splitlines()
    assert notice.startswith("onecomp: saved with quant_method 'onecomp'")
    assert summary.startswith("quantized 35 layers")


def test_an_error_starts_a_line_of_its_own_after_a_progress_bar(capsys):
    """Problem 7: a bar still open when the error comes is closed before the message."""
    from tqdm.auto import tqdm

    from onecomp_core.cli import report

    bar = tqdm(total=10, desc="perplexity", file=sys.stderr)
    bar.update(3)
    report("onecomp eval: error: the model failed")
    err = capsys.readouterr().err
    assert err.endswith("\nonecomp eval: error: the model failed\n")
    assert "perplexity" in err.split("\n")[-3]
    assert bar.disable or bar.n == 3  # closed, not reset


def test_allow_longer_context_lets_the_check_pass(capsys):
    """The context check is an explicit refusal, not a limit: the flag lets eval run."""
    capsys.readouterr()
    args = [*_eval(STORIES, "--seqlen", "600", "--max-tokens", "1300"), "--json"]
    assert main(args) == 2  # refused without the flag
    assert main([*args, "--allow-longer-context"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seqlen"] == 600


def test_readme_synopsis_names_every_quantize_option():
    """Problem 9: the README synopsis lists every option `onecomp quantize --help` knows."""
    from onecomp_core.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    synopsis = readme.split("```text", 1)[1].split("```", 1)[0]
    parser = build_parser()
    quantize_parser = parser._subparsers._group_actions[0].choices["quantize"]
    options = [
        max(a.option_strings, key=len)
        for a in quantize_parser._actions
        if a.option_strings and "--help" not in a.option_strings
    ]
    missing = [o for o in options if o not in synopsis]
    assert not missing, f"README synopsis lacks {missing}"
