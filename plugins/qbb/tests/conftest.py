"""Fixtures of the QBB tests: the real stories260K model and its calibration text."""

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
