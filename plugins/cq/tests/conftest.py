"""Fixtures of the CQ tests: a Runner on the real stories260K model with a little calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onecomp_core.kernels import pack_signs
from onecomp_cq import CQResult

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
        return Runner(config, method, calibration, show_progress=False, save_dtype="float32")

    return make


def _result(p: int, m: int, each_row: bool = True, seed: int = 0) -> tuple[CQResult, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    codes = torch.rand(p, m, generator=gen) < 0.5
    pairs = p if each_row else 1
    left = (-torch.rand(pairs, generator=gen)).half()
    right = torch.rand(pairs, generator=gen).half()
    dense = torch.where(codes, right.float()[:, None], left.float()[:, None]).expand(p, m)
    result = CQResult(
        codes=pack_signs(codes.float() * 2 - 1),
        left_mean=left,
        right_mean=right,
        out_features=p,
        in_features=m,
        each_row=each_row,
    )
    return result, dense


@pytest.fixture
def make_result():
    """A builder of small results with known dense weights: (result, dense)."""
    return _result
