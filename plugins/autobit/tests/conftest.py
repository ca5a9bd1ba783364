"""Fixtures of the AutoBit tests: the real stories260K model and a small calibration set."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[3].parent / "shared" / "assets"


@pytest.fixture(scope="session")
def stories_path() -> Path:
    path = ASSETS / "stories260K"
    if not path.is_dir():
        pytest.skip("the shared stories260K model is not available")
    return path


@pytest.fixture(scope="session")
def calib_path() -> Path:
    return ASSETS / "text" / "wikitext2-valid.tokens.txt"


@pytest.fixture(scope="session")
def make_runner(stories_path: Path, calib_path: Path):
    """A Runner on stories260K with 8 calibration sequences of 64 tokens."""
    from onecomp_core import CalibrationConfig, ModelConfig, Runner

    def make(quantizer, samples: int = 8, length: int = 64):
        calibration = CalibrationConfig(
            dataset=str(calib_path), num_calibration_samples=samples, max_length=length
        )
        return Runner(
            ModelConfig(path=str(stories_path), dtype="float32", device="cpu"),
            quantizer,
            calibration,
            show_progress=False,
            save_dtype="float32",  # saved and loaded: equal to the packed model in memory
        )

    return make


@pytest.fixture
def rtn_specs() -> list[dict]:
    """RTN (built into the core) 2/3/4/8 bit, group size 32: a stand-in for GPTQ."""
    return [{"method": "rtn", "wbits": b, "groupsize": 32} for b in (2, 3, 4, 8)]
