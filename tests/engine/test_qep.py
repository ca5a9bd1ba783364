"""QEP: the weight correction is the least-squares fit to the full-precision outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from onecomp_core.data.calibration import CalibrationConfig
from onecomp_core.data.model import ModelConfig
from onecomp_core.engine.qep import PairedCollector, QEPConfig, correct_weight
from onecomp_core.rtn import RTN
from onecomp_core.seed_api import Runner
from onecomp_core.testing import HessianRTN, HessianRTNPlugin, registered_plugin

ASSETS = Path(__file__).resolve().parents[3] / "shared" / "assets"
STORIES = ASSETS / "stories260K"


def _activations(seed: int = 0, tokens: int = 400, width: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=g, dtype=torch.float64)
    x_hat = x + 0.3 * torch.randn(tokens, width, generator=g, dtype=torch.float64)
    w = torch.randn(5, width, generator=g, dtype=torch.float64)
    return x, x_hat, w


def test_full_correction_is_the_least_squares_solution():
    x, x_hat, w = _activations()
    h = (2 / len(x)) * x_hat.t() @ x_hat
    c = (2 / len(x)) * (x - x_hat).t() @ x_hat
    corrected = correct_weight(w, h, c, perccorr=1.0, percdamp=0.0)
    direct = torch.linalg.lstsq(x_hat, x @ w.t()).solution.t()
    torch.testing.assert_close(corrected, direct, rtol=1e-8, atol=1e-8)
    # and it really lowers the output mismatch
    before = (x @ w.t() - x_hat @ w.t()).pow(2).sum()
    after = (x @ w.t() - x_hat @ corrected.t()).pow(2).sum()
    assert after < before


def test_partial_correction_scales_the_step():
    x, x_hat, w = _activations(1)
    h = (2 / len(x)) * x_hat.t() @ x_hat
    c = (2 / len(x)) * (x - x_hat).t() @ x_hat
    full = correct_weight(w, h, c, perccorr=1.0, percdamp=0.0)
    half = correct_weight(w, h, c, perccorr=0.5, percdamp=0.0)
    torch.testing.assert_close(half - w, 0.5 * (full - w))
    assert torch.equal(correct_weight(w, h, c, perccorr=0.0, percdamp=0.01), w)


def test_collector_keeps_no_activation_after_the_batch():
    fp, q = nn.Linear(6, 3), nn.Linear(6, 3)
    collector = PairedCollector({"l": fp}, {"l": q}, torch.float32)
    with torch.no_grad(), collector.hooked():
        for _ in range(3):
            x = torch.randn(2, 7, 6)
            fp(x)
            q(x + 0.1)
            assert collector._held == {}  # paired and dropped right away
    hessian, cross = collector.stats["l"].matrices()
    assert hessian.shape == cross.shape == (6, 6)
    assert collector.stats["l"].tokens == 42


def _runner(qep: bool, perccorr: float = 0.5, **kwargs) -> Runner:
    calibration = CalibrationConfig(
        dataset=str(ASSETS / "text" / "wikitext2-valid.tokens.txt"),
        max_length=64,
        num_calibration_samples=16,
        batch_size=8,
    )
    return Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"),
        HessianRTN(wbits=3),
        calibration,
        show_progress=False,
        qep=qep,
        qep_config=QEPConfig(perccorr=perccorr),
        **kwargs,
    )


def test_alpha_zero_reproduces_the_plain_run_bit_for_bit(tmp_path, one_thread):
    with registered_plugin(HessianRTNPlugin(), name="hessian_rtn"):
        for name, runner in (("plain", _runner(False)), ("qep0", _runner(True, perccorr=0.0))):
            runner.run()
            runner.save_quantized_model(tmp_path / name)
    a = load_file(str(tmp_path / "plain" / "model.safetensors"))
    b = load_file(str(tmp_path / "qep0" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_qep_lowers_perplexity_of_a_3bit_model():
    text = ASSETS / "text" / "tinystories-valid-excerpt.txt"
    ppl = {}
    for qep in (False, True):
        runner = _runner(qep)
        runner.run()
        ppl[qep] = runner.calculate_perplexity(text, max_tokens=4096).ppl
    assert ppl[True] < ppl[False]


def test_qep_refuses_a_method_without_statistics():
    runner = Runner(
        ModelConfig(path=STORIES, dtype="float32", device="cpu"),
        RTN(),
        qep=True,
        show_progress=False,
    )
    with pytest.raises(ValueError, match="run it without --qep"):
        runner.run()


def test_bad_qep_settings_are_listed():
    with pytest.raises(ValueError) as err:
        QEPConfig(perccorr=2, percdamp=-1).validate()
    assert "percdamp=-1: expected a number >= 0" in str(err.value)
    assert "perccorr=2: expected a number from 0 to 1" in str(err.value)


def test_unknown_qep_settings_are_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['colour'\] for --set-qep; "):
        QEPConfig.from_user({"colour": 1}, "--set-qep")
    assert QEPConfig.from_user({"perccorr": 0.25}, "--set-qep").perccorr == 0.25
