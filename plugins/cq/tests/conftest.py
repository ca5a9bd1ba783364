"""Fixtures of the CQ tests: a Runner on the real stories260K model with a little calibration."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[4] / "shared" / "assets"


@pytest.fixture(scope="session")
def stories_path() -> Path:
    path = ASSETS / "stories260K"
    if not path.is_dir():
        pytest.skip("the shared stories260K model is not available")
    return path


@pytest.fixture(scope="session")
def make_runner(stories_path: Path):
    """A Runner on stories260K with 4 calibration windows of 32 tokens."""
    from onecomp_core import CalibrationConfig, ModelConfig, Runner

    def make(method):
        calibration = CalibrationConfig(
            dataset=str(ASSETS / "text" / "wikitext2-valid.tokens.txt"),
            num_calibration_samples=4,
            max_length=32,
            batch_size=2,
        )
        config = ModelConfig(path=str(stories_path), dtype="float32", device="cpu")
        return Runner(config, method, calibration, show_progress=False)

    return make
