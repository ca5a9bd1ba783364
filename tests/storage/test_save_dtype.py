"""Unquantized tensors are saved in the checkpoint's 16-bit dtype (fp16 for fp32), or as asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from onecomp_core import load_quantized_model
from onecomp_core.cli import main
from onecomp_core.storage.save_dtype import choose_save_dtype

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"


@pytest.mark.parametrize(
    "checkpoint, override, expected",
    [
        (torch.float32, None, torch.float16),
        (None, None, torch.float16),
        ("bfloat16", None, torch.bfloat16),
        (torch.float16, None, torch.float16),
        (torch.bfloat16, "float32", torch.float32),
        (torch.float32, "bfloat16", torch.bfloat16),
    ],
)
def test_the_saved_dtype_follows_the_checkpoint_unless_asked(checkpoint, override, expected):
    assert choose_save_dtype(checkpoint, override) == expected


def test_an_unknown_save_dtype_is_refused_in_one_line(tmp_path, capsys):
    capsys.readouterr()
    args = ["quantize", str(STORIES), "--method", "rtn", "--out", str(tmp_path / "q")]
    with pytest.raises(SystemExit) as exit_:  # argparse's own error line
        main([*args, "--save-dtype", "int8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--save-dtype: invalid choice: 'int8'" in err[0]


def _dtypes(folder: Path) -> dict[str, str]:
    found = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            found |= {key: f.get_slice(key).get_dtype() for key in f.keys()}
    return found


@pytest.mark.skipif(not STORIES.is_dir(), reason="needs the shared stories260K")
@pytest.mark.parametrize("save_dtype, expected", [(None, "F16"), ("bfloat16", "BF16")])
def test_an_fp32_run_saves_its_unquantized_tensors_in_16_bits(tmp_path, save_dtype, expected):
    out = tmp_path / "q"
    args = ["quantize", str(STORIES), "--method", "rtn", "--dtype", "float32", "--out", str(out)]
    assert main([*args, "--quiet", *(["--save-dtype", save_dtype] if save_dtype else [])]) == 0
    dtypes = _dtypes(out)
    unquantized = {
        k: v for k, v in dtypes.items() if not k.endswith(("qweight", "qzeros", "g_idx", "scales"))
    }
    assert "model.embed_tokens.weight" in unquantized and "model.norm.weight" in unquantized
    assert set(unquantized.values()) == {expected}
    assert {dtypes[k] for k in dtypes if k.endswith(".scales")} == {"F16"}  # packed: unchanged
    assert {dtypes[k] for k in dtypes if k.endswith(".qweight")} == {"I32"}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == (save_dtype or "float16")
    model, _ = load_quantized_model(out)
    assert model.dtype == getattr(torch, save_dtype or "float16")
