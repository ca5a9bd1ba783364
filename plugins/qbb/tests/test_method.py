"""QBB's parameters and hooks: the seed's names and defaults, what it asks of the engine."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.contract import ConfigError
from onecomp_qbb import QBB


def test_seed_names_and_defaults():
    method = QBB()
    seed = (method.wbits, method.iters_per_basis, method.lr, method.ste_type)
    assert seed == (4, 1000, 1e-4, "clipped")
    assert (method.use_progressive_quantization, method.progressive_bits) == (False, 2)
    assert method.nominal_bits == 4 and method.with_bits(2).wbits == 2
    assert method.bits_for((64, 172)) == pytest.approx(4 + 64 / 64)
    with pytest.raises(ConfigError, match="ste_type"):
        QBB(ste_type="hard").validate()


def test_needs_follow_the_parameters():
    assert QBB().needs().inputs == "full" and QBB().needs().fine_tunes
    plain = QBB(weighting="none", finetune_steps=0).needs()
    assert plain.inputs == "none" and not plain.fine_tunes and not plain.calibration


def test_seed_call_without_statistics_falls_back_to_the_data_free_fit():
    linear = torch.nn.Linear(10, 6, bias=False)
    result = QBB(wbits=2, iters_per_basis=4).quantize_layer(linear)
    assert result.weighting == "none" and result.alphas.shape == (2, 10)
    with_input = QBB(wbits=2, iters_per_basis=4).quantize_layer(linear, input=torch.randn(50, 10))
    assert with_input.weighting == "activation"
