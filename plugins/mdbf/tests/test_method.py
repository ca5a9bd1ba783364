"""MDBF's parameters and hooks: pinned defaults, recorded facts, what it asks of the engine."""

from __future__ import annotations

import pytest
import torch

from onecomp_core.contract import ConfigError
from onecomp_mdbf import MDBF


def test_defaults_are_pinned_and_the_bits_rule_is_per_layer():
    """Reference defect: its docs say l=1, P=2 while its code uses l=2, P=1; pinned here."""
    method = MDBF()
    assert (method.l, method.P, method.target_bits, method.admm_outer_iters) == (2, 1, 1.0, 260)
    assert method.nominal_bits == 1.0 and method.with_bits(2).target_bits == 2
    over = MDBF(mlp_target_bits=2.0, module_target_bits={"a.q_proj": 3.0})
    assert [over.layer_bits(n) for n in ("a.q_proj", "a.mlp.up", "a.k_proj")] == [3.0, 2.0, 1.0]
    with pytest.raises(ConfigError, match="module_target_bits"):
        MDBF(module_target_bits={"x": -1}).validate()


def test_needs_follow_the_parameters():
    assert MDBF().needs().inputs == "full" and MDBF().needs().fine_tunes
    assert MDBF().needs().model_pass  # the distillation, 400 steps with fine-tuning on
    layerwise = MDBF(finetune_steps=0, activation_aware=False).needs()
    assert layerwise.inputs == "none" and not layerwise.fine_tunes and not layerwise.model_pass


def test_result_records_what_ran_and_its_bits():
    """Reference defect: its saved config records the requested activation_aware, not what ran."""
    linear = torch.nn.Linear(20, 9, bias=False)
    method = MDBF(target_bits=1.5, admm_outer_iters=3)  # activation-aware, but no statistics given
    result = method.quantize_layer(linear)
    assert result.is_quantized and result.activation_aware is False
    assert result.rank == round(1.5 * 9 * 20 / 29)
    assert result.effective_bits(9, 20) == pytest.approx(method.bits_for((9, 20)))
    x = torch.randn(64, 20)
    aware = method.quantize_layer(linear, input=x)  # the seed call with activations
    assert aware.activation_aware is True
