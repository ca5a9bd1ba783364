"""Fixtures of the ARB tests: a Runner on the real stories260K model with a little calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from onecomp_arb import ARBResult
from onecomp_core.kernels import pack_signs

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


def _result(p: int, m: int, variant: str, seed: int = 0) -> tuple[ARBResult, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    signs = torch.where(torch.rand(p, m, generator=gen) < 0.5, -1.0, 1.0)
    alpha = torch.rand(p, generator=gen).add(0.1).half()
    rc = variant == "rc"
    col = torch.rand(m, generator=gen).add(0.5).half() if rc else None
    mu = None if rc else torch.randn(p, generator=gen).half()
    dense = alpha.float()[:, None] * signs
    dense = dense * col.float()[None, :] if rc else dense + mu.float()[:, None]
    result = ARBResult(
        signs=pack_signs(signs),
        alpha=alpha,
        mu=mu,
        col_scale=col,
        out_features=p,
        in_features=m,
        variant=variant,
    )
    return result, dense


@pytest.fixture
def make_result():
    """A builder of small results with known dense weights: (result, dense)."""
    return _result
