"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from onecomp_core.contract import LayerJob
from onecomp_core.data.model import ModelConfig
from onecomp_core.rtn import RTN
from onecomp_core.storage import apply_results, build_artifact, save_quantized_model

STORIES = Path(__file__).resolve().parents[3] / "shared" / "assets" / "stories260K"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """stories260K with RTN 4-bit, saved through the storage API (no engine needed), per module."""
    config = ModelConfig(path=str(STORIES), dtype="float32", device="cpu")
    model, method = config.load_model(), RTN(wbits=4)
    results = {
        name: method.quantize(LayerJob(name, module))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name != "lm_head"
    }
    apply_results(model, results)
    artifact = build_artifact(
        model, method, results, config.load_tokenizer(), {"calibration_hash": None, "qep": None}
    )
    return save_quantized_model(artifact, tmp_path_factory.mktemp("saved") / "rtn4")
